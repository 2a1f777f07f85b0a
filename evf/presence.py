"""Generalized referring segmentation (gRefCOCO-style): a presence head that says whether the expression
refers to anything in the image at all, its loss, and the rule that empties a mask it rejects.

The head is a small MLP on the same fused feature the projector reads. With the head on, a sample whose target
mask is empty is trained only through the presence BCE (its mask loss is weighted 0), a sample with a target
through both. With the head off (the paper recipe) nothing here is used and ``EVFSAM`` is unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_PRESENCE_THRESHOLD = 0.5


class PresenceHead(nn.Sequential):
    """``Linear(D, D) - ReLU - Linear(D, 1)``: one logit per sample, "the expression refers to something"."""

    def __init__(self, width: int):
        super().__init__(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, 1))


def attach_presence_head(model: nn.Module, presence_weight: float = 1.0,
                         presence_threshold: float = DEFAULT_PRESENCE_THRESHOLD) -> nn.Module:
    """Give a loaded ``EVFSAM`` (e.g. official weights, which have no head) a freshly initialised presence head, on
    the projector's device and dtype, to fine-tune on gRES data."""
    first = model.projector[0].weight
    model.presence = PresenceHead(model.encoder.out_dim).to(device=first.device, dtype=first.dtype)
    model.presence_weight, model.presence_threshold = presence_weight, presence_threshold
    return model


def has_target(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Bool ``[B]``: which target masks have at least one foreground pixel."""
    return torch.stack([m.any() for m in masks])


def mask_loss_over_targets(parts: Sequence[dict[str, torch.Tensor]], present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean of each per-sample mask loss over the samples that have a target; empty-target samples are weighted 0
    (not dropped), so every mask-decoder parameter still gets a (zero) gradient, as DDP expects."""
    weights = present.to(parts[0]["loss"].dtype)
    weights = weights / weights.sum().clamp(min=1.0)
    return {k: (torch.stack([p[k] for p in parts]) * weights.to(parts[0][k].device)).sum() for k in parts[0]}


def presence_bce(presence_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the presence logits ``[B]`` against "the target is non-empty"."""
    return F.binary_cross_entropy_with_logits(presence_logits.float(), present.to(presence_logits.device).float())


def presence_scores(presence_logits: torch.Tensor) -> torch.Tensor:
    """Probability that the expression refers to something, fp32."""
    return presence_logits.float().sigmoid()


def reject_absent(masks: Sequence[torch.Tensor] | torch.Tensor, scores: torch.Tensor, threshold: float):
    """Masks with every mask whose presence score is below ``threshold`` emptied (a list stays a list)."""
    keep = (scores >= threshold).tolist()
    out = [m if k else torch.zeros_like(m) for m, k in zip(masks, keep)]
    return torch.stack(out) if isinstance(masks, torch.Tensor) else out
