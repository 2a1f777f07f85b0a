"""Thin LightningModule around ``EVFSAM``: optimisation recipe, small checkpoints and the evaluator."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerFn

from evf.checkpoint import CheckpointError, summarize_load_error
from evf.checkpoint_filter import drop_frozen, fill_frozen, frozen_state_keys, rng_states, set_rng_states
from evf.io import atomic_path
from evf.metrics import ReferringSegmentationMetrics, per_sample
from evf.model import EVFSAM
from evf.optim import linear_schedule
from evf.presence import presence_scores, reject_absent

# SAM's image encoder is frozen and kept in eval mode on purpose; Lightning's notice about it is noise.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class EVFSAMModule(L.LightningModule):
    """Args:
        model: the ``EVFSAM`` network (encoder and SAM backend chosen by ``class_path`` in YAML).
        lr, weight_decay, betas: AdamW (paper: lr 1e-4).
        warmup_steps: linear warm-up optimizer steps before the linear decay to 0 at the last step
            (``trainer.max_steps``; gradient accumulation counts as one step).
        predictions_jsonl: if set, ``test`` writes one JSON line per sample (id, sentence, I, U, IoU) there.
        save_frozen_weights: keep frozen weights (e.g. the SAM image encoder) in checkpoints. Off by default:
            they are rebuilt by the model constructor from their own checkpoint files, so a SAM-H
            checkpoint holds only the trainable weights and optimizer state.
    """

    def __init__(self, model: EVFSAM, lr: float = 1e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 0,
                 predictions_jsonl: str | None = None, save_frozen_weights: bool = False):
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.predictions_jsonl = predictions_jsonl
        self.save_frozen_weights = save_frozen_weights
        self.val_metrics = ReferringSegmentationMetrics()
        self.test_metrics = ReferringSegmentationMetrics()
        self.test_results: dict[str, float] = {}  # last test run, float64 values (the metrics file reads these)
        self.sample_rows: list[dict] = []

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.model.presence is None:  # the paper recipe
            losses = self.model.loss(self.model(batch), batch["masks"])
        else:  # gRES: the presence logits join the loss (docs/gres.md)
            logits, presence = self.model.forward_with_presence(batch)
            losses = self.model.loss(logits, batch["masks"], presence)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["masks"]))
        return losses["loss"]

    def evaluate(self, batch: dict, metrics: ReferringSegmentationMetrics) -> list[torch.Tensor]:
        """Updates ``metrics`` with the boolean masks (original resolution; a batch's ``ignore_masks``, if any,
        are left out of the scores) and returns them; with a presence head, the masks it rejects (score below
        ``model.presence_threshold``) are empty."""
        if self.model.presence is None:
            preds = [lg > 0 for lg in self.model(batch)]
        else:
            logits, presence = self.model.forward_with_presence(batch)
            preds = reject_absent([lg > 0 for lg in logits], presence_scores(presence), self.model.presence_threshold)
        metrics.update(preds, batch["masks"], batch.get("ignore_masks"))
        return preds

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        preds = self.evaluate(batch, self.test_metrics)
        if self.predictions_jsonl:
            rows = per_sample(preds, batch["masks"], batch.get("ignore_masks"))
            ids = batch.get("ids") or [None] * len(rows)
            texts = batch.get("texts") or [None] * len(rows)
            self.sample_rows += [{"id": i, "sentence": t, "I": int(r[0]), "U": int(r[1]), "IoU": float(r[2])}
                                 for i, t, r in zip(ids, texts, rows.tolist())]

    def on_test_epoch_start(self) -> None:
        self.sample_rows = []

    def on_validation_epoch_end(self) -> None:
        self.log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.test_results = self.log_metrics("test", self.test_metrics)
        if self.predictions_jsonl:
            self.write_predictions(Path(self.predictions_jsonl))

    def log_metrics(self, stage: str, metrics: ReferringSegmentationMetrics) -> dict[str, float]:
        values = {k: float(v) for k, v in metrics.compute().items()}
        # Already synced by torchmetrics and identical on every rank: "max" over ranks keeps them bit-exact.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if not math.isnan(v)}, prog_bar=stage == "val",
                      sync_dist=True, reduce_fx="max")
        metrics.reset()
        return values

    def write_predictions(self, path: Path) -> None:
        rows = self.sample_rows
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, rows)
            # The eval sampler deals sample k to rank k % world_size, so interleaving restores dataset order.
            longest = max(len(g) for g in gathered)
            rows = [g[k] for k in range(longest) for g in gathered if k < len(g)]
        if self.trainer.is_global_zero:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        self.sample_rows = []

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(self.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints: trainable weights + optimizer/scheduler + RNG --------------------------
    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        if isinstance(self.trainer.strategy, (DeepSpeedStrategy, FSDPStrategy)) and not self.save_frozen_weights:
            # DeepSpeed and FSDP restore module states themselves, before ``on_load_checkpoint`` could fill in
            # the frozen weights the checkpoint left out; those are already in place from the model constructor.
            self.strict_loading = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint and not self.save_frozen_weights:
            checkpoint["state_dict"] = drop_frozen(checkpoint["state_dict"], frozen_state_keys(self))
        checkpoint["evf_rng_states"] = rng_states()

    checkpoint_source: str | None = None  # the file being loaded, when not the trainer's ckpt_path (evf predict)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint of another architecture is bad input: one ``CheckpointError`` naming the file, instead of
        torch's multi-line ``RuntimeError`` (which stays for anything else)."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as exc:
            if "Error(s) in loading state_dict" not in str(exc):
                raise
            source = self.checkpoint_source or (self._trainer.ckpt_path if self._trainer is not None else None)
            raise CheckpointError(f"{source or 'the checkpoint'} does not fit the model built from its config: "
                                  f"{summarize_load_error(exc)}") from None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:
            fill_frozen(checkpoint["state_dict"], self.state_dict(), frozen_state_keys(self))
        if "evf_rng_states" in checkpoint and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            set_rng_states(checkpoint["evf_rng_states"])  # resuming: continue the random streams exactly
