"""What ``evf predict`` makes of one image's masks: 0/255 mask PNGs named after their prompts and an overlay.

    from evf.visualize import overlay, write_outputs
    blended = overlay(image, masks)                       # uint8 [H, W, 3]
    write_outputs(folder, image, prompts, masks)          # 00_<slug>.png ... + overlay.png, each atomically
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evf.io import save_png_atomic

# First colour is the official EVF-SAM overlay colour; the rest keep several masks apart.
COLOURS = ((50, 120, 220), (220, 60, 50), (60, 180, 75), (240, 200, 30), (145, 30, 180),
           (70, 200, 220), (240, 50, 230), (250, 150, 40), (128, 128, 128), (0, 128, 128))
OVERLAY_NAME = "overlay.png"


def slug(text: str, limit: int = 40) -> str:
    """File-name-safe, lower-case version of a prompt (``"The red square!"`` -> ``the-red-square``): its words
    (``\\w+``, so non-ASCII letters stay) joined by ``-``, at most ``limit`` characters; ``prompt`` if none."""
    words = re.findall(r"\w+", text.lower())
    return "-".join(words)[:limit].strip("-") or "prompt"


def mask_names(prompts: Sequence[str]) -> list[str]:
    """``00_<slug>.png`` per prompt; the index keeps prompts with the same slug apart."""
    width = max(2, len(str(len(prompts) - 1)))
    return [f"{i:0{width}d}_{slug(p)}.png" for i, p in enumerate(prompts)]


def image_file_names(prompts: Sequence[str]) -> list[str]:
    """The files one image gets: a mask per prompt, then the overlay."""
    return [*mask_names(prompts), OVERLAY_NAME]


def overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``image`` ``uint8 [H, W, 3]`` with mask ``i`` (``[N, H, W]`` bool) blended 50% with ``COLOURS[i]``."""
    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        colour = np.array(COLOURS[i % len(COLOURS)], dtype=np.float32)
        out[mask] = 0.5 * out[mask] + 0.5 * colour
    return out.round().astype(np.uint8)


def write_outputs(folder: Path, image: np.ndarray, prompts: Sequence[str], masks: np.ndarray) -> list[Path]:
    """The mask PNGs (0/255) and the overlay of one image into ``folder``; returns the paths written."""
    written = [Path(folder) / name for name in image_file_names(prompts)]
    for path, mask in zip(written, masks):
        save_png_atomic(path, mask.astype(np.uint8) * 255)
    save_png_atomic(written[-1], overlay(image, masks))
    return written
