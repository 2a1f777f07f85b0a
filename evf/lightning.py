"""Thin LightningModule around ``EVFSAM``: optimisation recipe, logging and the evaluator."""
from __future__ import annotations

import lightning as L
import torch

from evf.metrics import ReferringSegmentationMetrics
from evf.model import EVFSAM


class EVFSAMModule(L.LightningModule):
    """Args:
        model: the ``EVFSAM`` network (encoder and SAM backend chosen by ``class_path`` in YAML).
        lr, weight_decay, betas: AdamW (paper: lr 1e-4).
        warmup_steps: linear warm-up optimizer steps before the linear decay to 0 at ``max_steps``.
    """

    def __init__(self, model: EVFSAM, lr: float = 1e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 0):
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.val_metrics = ReferringSegmentationMetrics()
        self.test_metrics = ReferringSegmentationMetrics()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.model.loss(self.model(batch), batch["masks"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["masks"]))
        return losses["loss"]

    def evaluate(self, batch: dict, metrics: ReferringSegmentationMetrics) -> torch.Tensor:
        logits = self.model(batch)
        return metrics.update([lg > 0 for lg in logits], batch["masks"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_metrics("test", self.test_metrics)

    def log_metrics(self, stage: str, metrics: ReferringSegmentationMetrics) -> None:
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if not torch.isnan(v)}, prog_bar=stage == "val")
        metrics.reset()

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = self.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
