"""Image views exactly as the official EVF-SAM release builds them (spec §5): the encoders' view and the
helpers every view shares. Each SAM backend's own view lives beside the backend (``evf/sam/<backend>.py``).

Each view is a small picklable callable taking an RGB ``uint8`` array ``[H, W, 3]``, so the
dataloader workers can run it without holding a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evf.io import to_rgb_uint8

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@dataclass(frozen=True)
class StretchView:
    """BEiT-3 / CLIP-style view: [0,1] tensor, bicubic stretch to ``size`` with no antialias, normalise."""

    size: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    mode: str = "bicubic"

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(to_rgb_uint8(image)).permute(2, 0, 1).float().div(255.0)
        x = F.interpolate(x[None], size=(self.size, self.size), mode=self.mode, align_corners=False, antialias=False)[0]
        return normalize(x, self.mean, self.std)


def longest_side_size(h: int, w: int, target: int) -> tuple[int, int]:
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side_normalized(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """PIL bilinear (antialiased, uint8) resize of the longest side to ``size``, then 0-255 ImageNet norm."""
    image = to_rgb_uint8(image)
    h, w = longest_side_size(*image.shape[:2], size)
    resized = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return normalize(torch.from_numpy(resized).permute(2, 0, 1).float(), IMAGENET_MEAN_255, IMAGENET_STD_255), (h, w)
