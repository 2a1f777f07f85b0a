"""Tiny Mapillary Vistas v1.2: ``config.json`` + ``{training,validation}/{images,labels}``, palette label PNGs.

    python -m datamodules.testing.mapillary OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from datamodules.testing import cli, random_rects, write_image, write_index_png, write_json

# (name, readable, evaluate, colour) as config.json lists them; "void--unlabeled" is not evaluated
LABELS = [("animal--bird", "Bird", True, (165, 42, 42)), ("construction--flat--road", "Road", True, (128, 64, 128)),
          ("nature--sky", "Sky", True, (70, 130, 180)), ("object--vehicle--car", "Car", True, (0, 0, 142)),
          ("void--unlabeled", "Unlabeled", False, (0, 0, 0))]
FOLDERS = {"train": "training", "val": "validation"}


def write(out: str | Path, seed: int = 0, n_images: int = 3) -> dict:
    """Returns ``{"root", "samples": {split: [...]}, "images": {split: n}}`` (samples per image and present label)."""
    out, rng = Path(out), np.random.default_rng(seed)
    write_json(out / "config.json", {"version": "1.2", "mapping": "public", "folder_structure": "{split}/{content}/{key:.{ext}}",
                                     "labels": [{"name": n, "readable": r, "evaluate": e, "instances": False, "color": list(c)}
                                                for n, r, e, c in LABELS]})
    palette = [v for *_, c in LABELS for v in c]
    unlabeled = len(LABELS) - 1
    samples, counts = {}, {}
    for split, folder in FOLDERS.items():
        samples[split] = []
        for k in range(n_images):
            key = f"{split[:2]}{k:03d}xyzKEY"
            h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
            write_image(out / folder / "images" / f"{key}.jpg", rng, h, w)
            labels = np.full((h, w), unlabeled, dtype=np.uint8)
            for x0, y0, x1, y1 in random_rects(rng, h, w, 3):
                labels[y0:y1, x0:x1] = int(rng.integers(0, unlabeled))
            write_index_png(out / folder / "labels" / f"{key}.png", labels, palette)
            samples[split] += [{"id": f"{key}:{v}", "image_id": key, "text": f"[semantic] {LABELS[v][1].lower()}",
                                "mask": labels == v} for v in sorted(set(np.unique(labels).tolist()) - {unlabeled})]
        counts[split] = n_images
    return {"root": out, "samples": samples, "images": counts}


if __name__ == "__main__":
    sys.exit(cli(write))
