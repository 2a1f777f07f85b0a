"""Tiny ADE20K SceneParsing (``ADEChallengeData2016``): JPEG images, index-PNG annotations, objectInfo150.txt.

The class list keeps the official file's quirks (tab-separated, stray spaces, comma synonyms).

    python -m datamodules.testing.ade20k OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from datamodules.testing import cli, random_rects, write_image, write_index_png

# (Idx, Name as the official file spells it) for the first classes of objectInfo150
CLASSES = [(1, "wall"), (2, "building, edifice"), (3, "sky"), (4, "floor, flooring"), (5, "tree"),
           (6, "ceiling"), (7, "road, route"), (8, "bed ")]
FOLDERS = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}


def label_map(rng: np.random.Generator, h: int, w: int, n_classes: int) -> np.ndarray:
    """Background 0 ("other") with a few rectangles of random class values painted over it."""
    labels = np.zeros((h, w), dtype=np.uint8)
    for x0, y0, x1, y1 in random_rects(rng, h, w, int(rng.integers(2, 5))):
        labels[y0:y1, x0:x1] = int(rng.integers(1, n_classes + 1))
    return labels


def expected_samples(image_ids: list[str], maps: list[np.ndarray], names: dict[int, str]) -> list[dict]:
    """One sample per (image, present class), images in file order, classes ascending."""
    return [{"id": f"{i}:{v}", "image_id": i, "text": f"[semantic] {names[v]}", "mask": m == v}
            for i, m in zip(image_ids, maps) for v in sorted(set(np.unique(m).tolist()) - {0})]


def write(out: str | Path, seed: int = 0, n_images: int = 3) -> dict:
    """Returns ``{"root", "names", "samples": {split: [...]}, "images": {split: n}}``."""
    out, rng = Path(out), np.random.default_rng(seed)
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    lines += [f"{idx}{' ' if idx % 3 == 0 else ''}\t0.0{idx}\t{100 * idx}\t{10 * idx}\t{name}" for idx, name in CLASSES]
    out.mkdir(parents=True, exist_ok=True)
    (out / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    names = {idx: name.split(",")[0].strip() for idx, name in CLASSES}
    samples, counts = {}, {}
    for split, (folder, prefix) in FOLDERS.items():
        ids, maps = [], []
        for k in range(1, n_images + 1):
            image_id = f"{prefix}_{k:08d}"
            h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
            write_image(out / "images" / folder / f"{image_id}.jpg", rng, h, w)
            maps.append(label_map(rng, h, w, len(CLASSES)))
            write_index_png(out / "annotations" / folder / f"{image_id}.png", maps[-1])
            ids.append(image_id)
        samples[split], counts[split] = expected_samples(ids, maps, names), n_images
    return {"root": out, "names": names, "samples": samples, "images": counts}


if __name__ == "__main__":
    sys.exit(cli(write))
