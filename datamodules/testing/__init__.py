"""Fixture writers: tiny datasets written in exactly the real on-disk formats.

Each module ``datamodules.testing.<format>`` has ``write(out) -> dict`` returning what it wrote
(ids, sentences/prompts and the expected boolean masks, in the datamodule's evaluation order),
and can be run as ``python -m datamodules.testing.<format> OUT``. Expected masks are drawn as
unions of axis-aligned rectangles, whose rasterisation is unambiguous, so tests compare the
datamodules' masks against them pixel for pixel without trusting the decoder under test.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("red", "blue", "green", "left", "right", "top", "bottom", "man", "woman", "dog", "cat", "car", "tree")


def rect_mask(height: int, width: int, rects: Sequence[Sequence[int]]) -> np.ndarray:
    """Union of ``(x0, y0, x1, y1)`` rectangles (x1, y1 exclusive) as bool ``[H, W]``."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def rect_polygons(rects: Sequence[Sequence[int]]) -> list[list[float]]:
    """COCO polygons of the rectangles; pycocotools fills exactly x0..x1-1, y0..y1-1."""
    return [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)] for x0, y0, x1, y1 in rects]


def random_rects(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[int, int, int, int]]:
    rects = []
    for _ in range(count):
        x0, y0 = int(rng.integers(0, width - 4)), int(rng.integers(0, height - 4))
        rects.append((x0, y0, int(rng.integers(x0 + 2, width + 1)), int(rng.integers(y0 + 2, height + 1))))
    return rects


def random_sentence(rng: np.random.Generator) -> str:
    return "the " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))


def write_image(path: Path, rng: np.random.Generator, height: int, width: int) -> None:
    """A random RGB image; the format follows the suffix (JPEG for .jpg/.JPEG, PNG otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def write_index_png(path: Path, labels: np.ndarray, palette: Sequence[int] | None = None) -> None:
    """An 8-bit label map (``L`` mode, or ``P`` mode with a palette) as the datasets ship them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels.astype(np.uint8))
    if palette is None:
        image = Image.fromarray(labels)
    else:
        image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
        image.putpalette(list(palette))
    image.save(path, format="PNG")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def cli(write: Callable[[Path], dict], argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(write.__module__ or "") + ": write a tiny fixture dataset")
    parser.add_argument("out", type=Path, help="output folder (created)")
    args = parser.parse_args(argv)
    info = write(args.out)
    counts = {str(k): len(v) for k, v in info.get("samples", {}).items()}
    print(f"wrote {args.out}: samples per split {counts}")
    return 0

