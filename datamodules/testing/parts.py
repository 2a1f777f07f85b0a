"""Tiny COCO-format part datasets (Pascal-Part conversion or PartImageNet), shared by both writers.

Several instances of one part category per image (the datamodule must unite them), polygons and
one RLE annotation per image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.common import encode_rle
from datamodules.testing import random_rects, rect_mask, rect_polygons, write_image, write_json

# style -> (categories, expected prompt words per category id, ann file template, image dir template, image suffix)
STYLES = {
    "pascal_part": ([{"id": 1, "name": "person:arm"}, {"id": 2, "name": "person:hair"}, {"id": 3, "name": "dog:leg"},
                     {"id": 4, "name": "aeroplane:left_wing"}],
                    {1: "person arm", 2: "person hair", 3: "dog leg", 4: "aeroplane left wing"},
                    "{split}.json", "VOCdevkit/VOC2010/JPEGImages", ".jpg"),
    "partimagenet": ([{"id": 0, "name": "Quadruped Head", "supercategory": "Quadruped"},
                      {"id": 1, "name": "Quadruped Foot", "supercategory": "Quadruped"},
                      {"id": 2, "name": "Fin", "supercategory": "Fish"}],
                     {0: "quadruped head", 1: "quadruped foot", 2: "fish fin"},
                     "annotations/{split}/{split}.json", "images/{split}", ".JPEG"),
}


def write_parts(out: str | Path, style: str, seed: int = 0, n_images: int = 3) -> dict:
    """Returns ``{"root", "samples": {split: [...]}, "images": {split: n}}``; one sample per (image, category)."""
    out, rng = Path(out), np.random.default_rng(seed)
    categories, phrases, ann_file, image_dir, suffix = STYLES[style]
    samples, counts, ann_id = {}, {}, 1
    for s, split in enumerate(("train", "val")):
        images, annotations, samples[split] = [], [], []
        for k in range(n_images):
            image_id = 100 * (s + 1) + k
            name = f"2008_{image_id:06d}{suffix}"
            h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
            write_image(out / image_dir.format(split=split) / name, rng, h, w)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            chosen = rng.choice(len(categories), size=2, replace=False)
            union = {}
            for c in sorted(int(i) for i in chosen):
                cid = categories[c]["id"]
                union[cid] = np.zeros((h, w), dtype=bool)
                for instance in range(int(rng.integers(1, 4))):  # several instances, united by the datamodule
                    rects = random_rects(rng, h, w, 1)
                    mask = rect_mask(h, w, rects)
                    rle = instance == 1
                    annotations.append({"id": ann_id, "image_id": image_id, "category_id": cid, "iscrowd": int(rle),
                                        "segmentation": encode_rle(mask) if rle else rect_polygons(rects),
                                        "area": float(mask.sum()), "bbox": [0, 0, 1, 1]})
                    union[cid] |= mask
                    ann_id += 1
            samples[split] += [{"id": f"{image_id}:{cid}", "image_id": str(image_id), "text": f"[semantic] {phrases[cid]}",
                                "mask": union[cid]} for cid in sorted(union)]
        write_json(out / ann_file.format(split=split), {"images": images, "annotations": annotations, "categories": categories})
        counts[split] = n_images
    return {"root": out, "samples": samples, "images": counts}
