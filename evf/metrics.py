"""The one evaluator: referring-segmentation metrics as a torchmetrics ``Metric`` (synced across processes).

- cIoU = ΣI / ΣU over the split (1.0 when the split's union is empty).
- gIoU = mean of per-sample IoU, with IoU = 1 when prediction and target are both empty.
- P@t = fraction of samples with IoU > t, for t in 0.5 … 0.9.
- no-target accuracy (gRefCOCO-style data): among samples whose target is empty, the fraction
  predicted empty; ``nan`` when the split has none.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground intersection and union pixel counts of two boolean masks of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
    pred, target = pred.bool(), target.bool()
    return (pred & target).sum(dtype=torch.float64), (pred | target).sum(dtype=torch.float64)


def sample_iou(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class ReferringSegmentationMetrics(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("inter", "union", "iou_sum", "count", "no_target", "no_target_correct"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(PRECISION_THRESHOLDS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Boolean masks per sample (sizes may differ between samples); returns the per-sample I, U, IoU ``[N, 3]``."""
        rows = []
        for pred, target in zip(preds, targets, strict=True):
            i, u = intersection_union(pred, target)
            iou = sample_iou(i, u)
            self.inter += i
            self.union += u
            self.iou_sum += iou
            self.count += 1
            self.hits += (iou > torch.tensor(PRECISION_THRESHOLDS, dtype=torch.float64, device=iou.device)).double()
            if not target.any():
                self.no_target += 1
                self.no_target_correct += float(not pred.any())
            rows.append(torch.stack([i, u, iou]))
        return torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        out = {
            "cIoU": torch.where(self.union > 0, self.inter / self.union.clamp(min=1), torch.ones_like(self.union)),
            "gIoU": self.iou_sum / count,
        }
        for t, hits in zip(PRECISION_THRESHOLDS, self.hits):
            out[f"P@{t}"] = hits / count
        out["no_target_acc"] = self.no_target_correct / self.no_target if self.no_target > 0 else torch.tensor(float("nan"))
        out["samples"] = self.count
        return {k: v.float() for k, v in out.items()}
