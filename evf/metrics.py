"""The one evaluator: referring-segmentation metrics as a torchmetrics ``Metric`` (synced across processes).

- cIoU = ΣI / ΣU over the split (1.0 when the split's union is empty).
- gIoU = mean of per-sample IoU, with IoU = 1 when prediction and target are both empty.
- P@t = fraction of samples with IoU > t, for t in 0.5 … 0.9.
- no-target accuracy (gRefCOCO-style data): among samples whose target is empty, the fraction
  predicted empty; ``nan`` when the split has none.
- N_acc / T_acc (gRefCOCO's names and definitions, ReLA's ``refer_evaluation.py``): among no-target
  samples the fraction predicted empty (= no_target_acc), among samples with a target the fraction
  predicted non-empty; ``nan`` when the split has none of that kind (ReLA reports 0 for both when a
  split has no no-target sample). A prediction counts as "no target" exactly when its mask is empty
  (a presence head empties the masks it rejects), so gIoU and cIoU above are gRefCOCO's: a no-target
  sample scores IoU 1 if predicted empty, else 0 and its predicted area joins the cIoU union.
- samples = how many samples were counted (every sample exactly once, however many processes).
- ignore masks (optional, per sample; e.g. ReasonSeg's "ignore" regions): their pixels count in neither
  the intersection nor the union of that sample, nor in its prediction or target emptiness.

Exactness across process counts: I and U are integer pixel counts summed in float64 (exact below
2**53), the P@t and no-target states are counts, and gIoU is an exactly rounded sum (``math.fsum``)
of the gathered per-sample IoUs, so the result does not depend on how samples were split or ordered.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
COUNT_STATES = ("inter", "union", "count", "no_target", "no_target_correct")


def intersection_union(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground intersection and union pixel counts of two boolean masks of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
    pred, target = pred.bool(), target.bool()
    return (pred & target).sum(dtype=torch.float64), (pred | target).sum(dtype=torch.float64)


def sample_iou(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def without_ignored(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                    ignores: Sequence[torch.Tensor | None] | None) -> tuple[list, list]:
    """Prediction and target with each sample's ignore pixels cleared (``None`` ignores nothing)."""
    if ignores is None:
        return list(preds), list(targets)
    for target, ignore in zip(targets, ignores, strict=True):
        if ignore is not None and ignore.shape != target.shape:
            raise ValueError(f"ignore mask {tuple(ignore.shape)} and target {tuple(target.shape)} differ in size")
    pairs = [(p, t) if ig is None else (p.bool() & ~ig.bool(), t.bool() & ~ig.bool())
             for p, t, ig in zip(preds, targets, ignores, strict=True)]
    return [p for p, _ in pairs], [t for _, t in pairs]


def per_sample(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
               ignores: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Per-sample intersection, union and IoU as float64 ``[N, 3]`` (ignore pixels excluded)."""
    preds, targets = without_ignored(preds, targets, ignores)
    rows = [torch.stack([i, u, sample_iou(i, u)]) for i, u in
            (intersection_union(p, t) for p, t in zip(preds, targets, strict=True))]
    return torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)


class ReferringSegmentationMetrics(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in COUNT_STATES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(PRECISION_THRESHOLDS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ious", default=[], dist_reduce_fx="cat")
        for name in ("target", "target_correct"):  # T_acc counts (gRES)
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
               ignores: Sequence[torch.Tensor | None] | None = None) -> None:
        """Boolean masks per sample (sizes may differ between samples); ``ignores``: optional per-sample
        boolean masks of pixels left out of the scores (an entry may be ``None``)."""
        preds, targets = without_ignored(preds, targets, ignores)
        rows = per_sample(preds, targets).to(self.hits.device)
        thresholds = torch.tensor(PRECISION_THRESHOLDS, dtype=torch.float64, device=self.hits.device)
        for (i, u, iou), target, pred in zip(rows, targets, preds):
            self.inter += i
            self.union += u
            self.count += 1
            self.hits += (iou > thresholds).double()
            if not target.any():
                self.no_target += 1
                self.no_target_correct += float(not pred.any())
            else:
                self.target += 1
                self.target_correct += float(bool(pred.any()))
        self.ious.append(rows[:, 2])

    def compute(self) -> dict[str, torch.Tensor]:
        """Scalar float64 tensors: cIoU, gIoU, P@0.5 … P@0.9, no_target_acc, N_acc, T_acc, samples."""
        ious = dim_zero_cat(self.ious) if isinstance(self.ious, torch.Tensor) or self.ious else torch.zeros(0)
        count = max(float(self.count), 1.0)
        f64 = {"dtype": torch.float64, "device": self.count.device}
        out = {
            "cIoU": self.inter / self.union if self.union > 0 else torch.tensor(1.0, **f64),
            "gIoU": torch.tensor(math.fsum(ious.double().tolist()) / count, **f64),
        }
        for t, hits in zip(PRECISION_THRESHOLDS, self.hits):
            out[f"P@{t}"] = hits / count
        nan = torch.tensor(float("nan"), **f64)
        out["no_target_acc"] = self.no_target_correct / self.no_target if self.no_target > 0 else nan
        out["N_acc"] = out["no_target_acc"].clone()
        out["T_acc"] = self.target_correct / self.target if self.target > 0 else nan.clone()
        out["samples"] = self.count.clone()
        return out
