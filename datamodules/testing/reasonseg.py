"""Tiny ReasonSeg in its released layout: ``{train,val,test}/<name>.jpg`` + ``<name>.json`` (LabelMe-style).

Each JSON holds ``text`` (instructions), ``is_sentence`` and ``shapes`` (``label`` "target" / "ignore" /
"flag", ``points`` as float ``[x, y]`` pairs, plus LabelMe's ``shape_type``/``group_id``/``flags``). Regions are
rectangles whose vertices carry fractions (truncated by the loader) and may leave the image; the first images
of each split overlap a small region of one kind inside a larger one of the other (the smaller wins), and
``test`` has a sample whose target is empty (only an ignore region). One JSON is cp1252-encoded, as a few
released files are. Expected masks are painted from the rectangles (vertices inclusive), largest first.

    python -m datamodules.testing.reasonseg OUT
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from datamodules.testing import WORDS, cli, random_rects, write_image

SPLITS = {"train": 3, "val": 3, "test": 4}
LONG_TEMPLATE = "What in this picture would a {} {} use first?"


def inclusive_region(height: int, width: int, rect) -> np.ndarray:
    """Pixels of a rectangle with inclusive integer corners, clipped to the image."""
    x0, y0, x1, y1 = rect
    mask = np.zeros((height, width), dtype=bool)
    mask[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = True
    return mask


def shape(label: str, rect, fraction: float) -> dict:
    """A LabelMe polygon of the rectangle; ``fraction`` (< 1) is added to non-negative vertices, which the
    loader's truncation removes again."""
    x0, y0, x1, y1 = (v + fraction if v >= 0 else float(v) for v in rect)
    return {"label": label, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "group_id": None,
            "shape_type": "polygon", "flags": {}}


def regions(rng: np.random.Generator, h: int, w: int, k: int, split: str) -> list[tuple[str, tuple]]:
    """(label, inclusive rect) list for image ``k`` of ``split``."""
    if k == 0:  # a small ignore region inside a large target: the ignore pixels win
        return [("target", (1, 1, w - 3, h - 3)), ("ignore", (4, 4, 8, 7)), ("flag", (0, 0, 3, 3))]
    if k == 1:  # a small target inside a large ignore region, and a target leaving the image
        return [("ignore", (2, 2, w - 2, h - 4)), ("target", (5, 5, 9, 10)), ("target", (w - 4, -3, w + 5, 3))]
    if split == "test" and k == 2:  # no target at all: an empty mask, scored 1 when predicted empty
        return [("ignore", (3, 3, 10, 9))]
    rects = [(x0, y0, x1 - 1, y1 - 1) for x0, y0, x1, y1 in random_rects(rng, h, w, 3)]
    return [("target", rects[0]), ("target", rects[1]), ("ignore" if k % 2 else "target", rects[2])]


def painted(h: int, w: int, labelled: list[tuple[str, tuple]]) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) bool masks: regions painted from the largest to the smallest (ties: later shape first)."""
    kept = [(label, inclusive_region(h, w, rect)) for label, rect in labelled if label != "flag"]
    order = sorted(range(len(kept)), key=lambda i: (kept[i][1].sum(), i), reverse=True)
    values = np.zeros((h, w), dtype=np.uint8)
    for i in order:
        values[kept[i][1]] = 2 if "ignore" in kept[i][0] else 1
    return values == 1, values == 2


def write(out: str | Path, seed: int = 0) -> dict:
    """Returns ``{"root", "samples": {split: [...]}, "images": {split: n}}``; a sample holds ``id``, ``image_id``,
    ``text`` (the first instruction), ``texts``, ``is_sentence``, ``mask`` and ``ignore``, in evaluation order."""
    out, rng = Path(out), np.random.default_rng(seed)
    samples, counts = {}, {}
    for split, n in SPLITS.items():
        samples[split], counts[split] = [], n
        for k in range(n):
            name = f"{split}_{k:04d}_{int(rng.integers(10**6)):06d}"
            h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
            write_image(out / split / f"{name}.jpg", rng, h, w)
            labelled = regions(rng, h, w, k, split)
            long = k % 2 == 0
            words = rng.choice(WORDS, size=4)
            texts = ([LONG_TEMPLATE.format(words[0], words[1]), LONG_TEMPLATE.format(words[2], words[3])] if long
                     else [f"the {words[0]} {words[1]}", f"the {words[2]}", f"{words[3]}"])[: 1 + k % 3]
            cp1252 = split == "val" and k == 1
            if cp1252:
                texts[0] = "the café sign"  # é is 0xE9 in cp1252: not valid UTF-8
            record = {"text": texts, "is_sentence": long, "image_path": f"{name}.jpg",
                      "shapes": [shape(label, rect, 0.6 if i % 2 else 0.25) for i, (label, rect) in enumerate(labelled)]}
            (out / split / f"{name}.json").write_bytes(json.dumps(record, ensure_ascii=False).encode(
                "cp1252" if cp1252 else "utf-8"))
            target, ignore = painted(h, w, labelled)
            samples[split].append({"id": f"{name}:0", "image_id": name, "text": texts[0], "texts": texts,
                                   "is_sentence": long, "mask": target, "ignore": ignore})
    return {"root": out, "samples": samples, "images": counts}


if __name__ == "__main__":
    sys.exit(cli(write))
