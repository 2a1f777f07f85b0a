"""Train-time augmentation of raw samples with albumentations (image and mask transformed together).

It runs on the raw ``uint8`` image and bool mask, *before* the plugins' own views, so encoder and
SAM views are always built from the augmented pixels. Flips are deliberately absent from the
presets: referring expressions say "left" and "right", and a flipped image would contradict them.

A pipeline is given as a preset name or a list of ``{"name": <albumentations class>, **kwargs}``
(YAML-friendly), e.g.::

    augment:
      - {name: ColorJitter, brightness: 0.2, contrast: 0.2, p: 0.5}
      - {name: Affine, scale: [0.8, 1.2], p: 0.5}
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from evf.config_errors import ConfigError

PRESETS: dict[str, list[dict[str, Any]]] = {
    # pixel-level only: nothing moves, so the mask needs no change
    "color": [{"name": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.8}],
    "scale": [
        {"name": "Affine", "scale": [0.75, 1.25], "translate_percent": [-0.1, 0.1], "p": 0.5},
        {"name": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.8},
    ],
}


def build_augmentation(spec: Any):
    """``None`` | preset name | list of ``{name, **kwargs}`` | an ``albumentations.Compose`` -> Compose or None."""
    if spec is None or spec == [] or spec == "none":
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    if isinstance(spec, A.BaseCompose):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigError(f"unknown augmentation preset {spec!r}; choose from {sorted(PRESETS)} or give a list")
        spec = PRESETS[spec]
    transforms = []
    for entry in spec:
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not hasattr(A, name):
            raise ConfigError(f"augmentation entry {entry!r} needs 'name' of an albumentations transform, got {name!r}")
        transforms.append(getattr(A, name)(**entry))
    return A.Compose(transforms)


def is_geometric(pipeline) -> bool:
    """True if any transform moves pixels (albumentations DualTransform: crops, affine, flips, resizes)."""
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import DualTransform

    for t in getattr(pipeline, "transforms", []):
        if isinstance(t, DualTransform) or (isinstance(t, BaseCompose) and is_geometric(t)):
            return True
    return False


class Augmenter:
    """Picklable ``raw sample -> raw sample``; a ``seed`` field in the sample makes it reproducible."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    @property
    def geometric(self) -> bool:
        return is_geometric(self.pipeline)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if "seed" in sample:
            self.pipeline.set_random_seed(int(sample["seed"]))
        mask = np.asarray(sample["mask"], dtype=np.uint8)
        out = self.pipeline(image=np.ascontiguousarray(sample["image"]), mask=mask)
        return {**sample, "image": out["image"], "mask": np.asarray(out["mask"]) > 0}
