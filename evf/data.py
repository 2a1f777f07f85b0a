"""Per-sample preprocessing and batching shared by every datamodule.

Datasets yield raw samples ``{"image": uint8 [H,W,3], "text": str, "mask": bool [H,W], "id": str, ...}``
(optionally ``"ignore_mask": bool [H,W]``, pixels the metrics leave out; batched as ``"ignore_masks"``);
``Preprocessor`` turns them into the model's views with the plugins' own transforms.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evf.transforms import to_rgb_uint8

PASSTHROUGH_KEYS = ("text", "id", "image_id")


@dataclass
class Preprocessor:
    encoder_view: Callable[[np.ndarray], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], dict[str, torch.Tensor]]
    sam_view: Callable[[np.ndarray], tuple[torch.Tensor, tuple[int, int]]]

    def sample(self, image: np.ndarray, **raw: Any) -> dict[str, Any]:
        """Views of one image plus the raw fields; ``mask`` becomes a bool tensor at the original size."""
        image = to_rgb_uint8(image)
        sam_image, input_size = self.sam_view(image)
        out = {
            "enc_images": self.encoder_view(image),
            "sam_images": sam_image,
            "input_sizes": torch.tensor(input_size),
            "original_sizes": torch.tensor(image.shape[:2]),
        }
        if raw.get("mask") is not None:
            out["masks"] = torch.as_tensor(np.asarray(raw["mask"]), dtype=torch.bool)
        if raw.get("ignore_mask") is not None:  # pixels the evaluation leaves out (e.g. ReasonSeg "ignore" regions)
            out["ignore_masks"] = torch.as_tensor(np.asarray(raw["ignore_mask"]), dtype=torch.bool)
        out.update({k: raw[k] for k in PASSTHROUGH_KEYS if k in raw})
        return out

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        return self.sample(**raw)

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stack views, tokenize texts (right-padded to the longest), keep masks as a list (sizes differ)."""
        batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples])
                                 for k in ("enc_images", "sam_images", "input_sizes", "original_sizes") if k in samples[0]}
        if "sam_embeddings" in samples[0]:
            batch["sam_embeddings"] = torch.stack([s["sam_embeddings"] for s in samples])
        batch.update(self.tokenizer([s["text"] for s in samples]))
        if "masks" in samples[0]:
            batch["masks"] = [s["masks"] for s in samples]
        if any("ignore_masks" in s for s in samples):
            batch["ignore_masks"] = [s.get("ignore_masks") for s in samples]
        for key in PASSTHROUGH_KEYS:
            if key in samples[0]:
                batch[key + "s"] = [s[key] for s in samples]
        return batch
