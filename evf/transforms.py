"""Image views exactly as the official EVF-SAM release builds them (spec §5).

Each view is a small picklable callable taking an RGB ``uint8`` array ``[H, W, 3]``, so the
dataloader workers can run it without holding a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Gray, gray+alpha, RGBA and 16-bit images become ``uint8 [H, W, 3]``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an image [H, W, C] with H, W > 0, got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or uint16 image, got {image.dtype}")
    channels = image.shape[2]
    if channels in (1, 2):
        image = np.repeat(image[..., :1], 3, axis=2)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"expected 1-4 image channels, got {channels}")
    return np.ascontiguousarray(image)


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


@dataclass(frozen=True)
class Sam1View:
    """SAM-1 view: PIL bilinear resize of the longest side to ``size``, 0-255 ImageNet norm, zero-pad bottom/right.

    Returns ``(image [3, size, size], input_size (h, w))``; ``input_size`` is needed to crop the padding back off.
    """

    size: int = 1024

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x, (h, w) = resize_longest_side_normalized(image, self.size)
        return F.pad(x, (0, self.size - w, 0, self.size - h)), (h, w)


@dataclass(frozen=True)
class SquareStretchView:
    """SAM-2 and EfficientSAM view: stretch to ``size``² (aspect ratio not kept, no padding), then 0-255 ImageNet norm.

    ``resize="tensor"`` is the official inference/demo path: bilinear interpolation of the **uint8**
    tensor (align_corners=False, no antialias), so the stretched pixels are rounded to integers
    before normalising. ``resize="pil"`` is the official eval.py path: PIL bilinear (antialiased).
    Returns ``(image [3, size, size], input_size (size, size))``.
    """

    size: int = 1024
    resize: str = "tensor"

    def __post_init__(self):
        if self.resize not in ("tensor", "pil"):
            raise ValueError(f"resize must be 'tensor' or 'pil', got {self.resize!r}")

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        image = to_rgb_uint8(image)
        if self.resize == "pil":
            x = torch.from_numpy(np.array(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR)))
            x = x.permute(2, 0, 1)
        else:
            x = torch.from_numpy(image).permute(2, 0, 1)[None]
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)[0]
        return normalize(x.float(), IMAGENET_MEAN_255, IMAGENET_STD_255), (self.size, self.size)


@dataclass(frozen=True)
class LongestSideStretchView:
    """EfficientSAM view of the official EVF-SAM code before commit 9d00853 (HEAD uses ``SquareStretchView``):
    the SAM-1 longest-side resize and normalisation, then a bilinear stretch (float, no antialias) to ``size``².

    Returns ``(image [3, size, size], input_size (h, w) of the longest-side resize)``.
    """

    size: int = 1024

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x, (h, w) = resize_longest_side_normalized(image, self.size)
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)[0]
        return x, (h, w)
