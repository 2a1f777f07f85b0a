"""Tiny LIP or CIHP human-parsing folder: JPEG images, index-PNG parsing labels, id lists.

    python -m datamodules.testing.humanparsing OUT [--layout is lip; call write(out, layout="cihp") for CIHP]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from datamodules.testing import cli, random_rects, write_image, write_index_png

# label value -> (person-side name, viewer-side name): the fixture's own statement of the mapping
PARTS = {2: ("hair", "hair"), 5: ("upper clothes", "upper clothes"), 14: ("left arm", "right arm"),
         15: ("right arm", "left arm"), 16: ("left leg", "right leg"), 19: ("right shoe", "left shoe")}
CIHP_PARTS = {**PARTS, 10: ("torso skin", "torso skin")}


def paths(out: Path, layout: str, split: str) -> tuple[Path, Path, Path]:
    if layout == "lip":
        return (out / "TrainVal_images" / f"{split}_images", out / "TrainVal_parsing_annotations" / f"{split}_segmentations",
                out / "TrainVal_images" / f"{split}_id.txt")
    folder = out / {"train": "Training", "val": "Validation"}[split]
    return folder / "Images", folder / "Category_ids", folder / f"{split}_id.txt"


def write(out: str | Path, seed: int = 0, layout: str = "lip", n_images: int = 3) -> dict:
    """Returns ``{"root", "samples": {split: [...]}, "person_side": {split: [...texts]}, "images": {split: n}}``;
    ``samples`` use the viewer-side names (the datamodule's default)."""
    out, rng = Path(out), np.random.default_rng(seed)
    parts = CIHP_PARTS if layout == "cihp" else PARTS
    values = sorted(parts)
    samples, person, counts = {}, {}, {}
    for split in ("train", "val"):
        images, labels_dir, id_file = paths(out, layout, split)
        ids = [f"{1000 * (split == 'val') + k}_{k:07d}" for k in range(n_images)]
        samples[split], person[split] = [], []
        for image_id in ids:
            h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
            write_image(images / f"{image_id}.jpg", rng, h, w)
            labels = np.zeros((h, w), dtype=np.uint8)
            for x0, y0, x1, y1 in random_rects(rng, h, w, 4):
                labels[y0:y1, x0:x1] = values[int(rng.integers(len(values)))]
            write_index_png(labels_dir / f"{image_id}.png", labels)
            for v in sorted(set(np.unique(labels).tolist()) - {0}):
                samples[split].append({"id": f"{image_id}:{v}", "image_id": image_id, "text": f"[semantic] {parts[v][1]}",
                                       "mask": labels == v})
                person[split].append(f"[semantic] {parts[v][0]}")
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text("\n".join(ids) + "\n")
        counts[split] = n_images
    return {"root": out, "samples": samples, "person_side": person, "images": counts}


if __name__ == "__main__":
    sys.exit(cli(write))
