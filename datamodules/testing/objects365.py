"""Tiny Objects365 (v2 layout) with known instance counts, plus the pre-pass output format.

Per image the categories have 1, 2 or 3 boxes, one box is crowd, and one image has no category
with a single instance, so the one-instance filter's result is known exactly. ``file_name`` keeps
the release's ``images/v1/patchN/...`` prefix while files sit in ``<split>/patchN/``.
``sam_masks/objects365_<split>.json`` is what ``evf prepare objects365`` writes (here the masks are
the filled boxes, so they are known pixel for pixel).

    python -m datamodules.testing.objects365 OUT
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from datamodules.common import encode_rle
from datamodules.testing import cli, rect_mask, write_image, write_json

CATEGORIES = [{"id": 1, "name": "Person"}, {"id": 2, "name": "Sneakers"}, {"id": 3, "name": "Chair"},
              {"id": 4, "name": "Other Shoes"}, {"id": 5, "name": "Hat"}]
# per image: (category id, number of boxes, crowd?) -- category kept iff exactly one non-crowd box
LAYOUT = [
    [(1, 1, False), (2, 2, False), (3, 1, False)],  # keeps 1 and 3
    [(1, 3, False), (4, 1, False), (5, 1, True)],   # keeps 4 (5 is a crowd box)
    [(2, 2, False), (3, 2, False)],                 # keeps nothing: the image drops out
    [(5, 1, False)],                                # keeps 5
]


def write(out: str | Path, seed: int = 0, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Returns ``{"root", "samples": {split: [...]}, split: {"before": {"images", "annotations"}, "after": {...},
    "kept": {image_id: [ann ids]}, "per_category": {name: kept count}}}`` (samples per kept annotation)."""
    out, rng = Path(out), np.random.default_rng(seed)
    info: dict = {"root": out, "samples": {}}
    for s, split in enumerate(splits):
        info[split] = write_split(out, split, rng, 100 * s)
        info["samples"][split] = info[split].pop("samples")
    return info


def write_split(out: Path, split: str, rng: np.random.Generator, offset: int) -> dict:
    images, annotations, kept, samples = [], [], {}, []
    for k, spec in enumerate(LAYOUT):
        image_id = 40 + k + offset
        name = f"objects365_v2_{image_id:08d}.jpg"
        h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
        write_image(out / split / f"patch{k % 2}" / name, rng, h, w)
        images.append({"id": image_id, "file_name": f"images/v2/patch{k % 2}/{name}", "height": h, "width": w})
        for category, count, crowd in spec:
            for _ in range(count):
                x0, y0 = int(rng.integers(0, w - 6)), int(rng.integers(0, h - 6))
                x1, y1 = int(rng.integers(x0 + 3, w + 1)), int(rng.integers(y0 + 3, h + 1))
                ann = {"id": offset + len(annotations) + 1, "image_id": image_id, "category_id": category, "iscrowd": int(crowd),
                       "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float((x1 - x0) * (y1 - y0))}
                annotations.append(ann)
                if count == 1 and not crowd:
                    kept.setdefault(image_id, []).append(ann["id"])
                    mask = rect_mask(h, w, [(x0, y0, x1, y1)])
                    samples.append({"id": str(ann["id"]), "image_id": str(image_id), "mask": mask,
                                    "text": CATEGORIES[category - 1]["name"].lower(), "rle": encode_rle(mask)})
    write_json(out / split / f"zhiyuan_objv2_{split}.json", {"images": images, "annotations": annotations, "categories": CATEGORIES})
    by_id = {a["id"]: a for a in annotations}
    prepared = [{**by_id[int(s["id"])], "segmentation": s["rle"]} for s in samples]
    write_json(out / "sam_masks" / f"objects365_{split}.json",
               {"images": [i for i in images if i["id"] in kept], "annotations": prepared, "categories": CATEGORIES})
    per_category = Counter(CATEGORIES[by_id[a]["category_id"] - 1]["name"] for ids in kept.values() for a in ids)
    return {"before": {"images": len(images), "annotations": len(annotations)},
            "after": {"images": len(kept), "annotations": sum(map(len, kept.values()))}, "kept": kept,
            "per_category": dict(per_category), "samples": [{k: v for k, v in s.items() if k != "rle"} for s in samples]}


if __name__ == "__main__":
    sys.exit(cli(write))
