"""Tiny gRefCOCO: ``grefcoco/grefs(unc).json`` + ``grefcoco/instances.json``, images in ``images/train2014``.

Refs are single-target, multi-target (masks united), no-target (``ann_id == [-1]``, empty mask) and
one that includes a crowd annotation (excluded from the union, as the gRefCOCO toolkit does).

    python -m datamodules.testing.grefcoco OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from datamodules.common import encode_rle
from datamodules.testing import cli, random_rects, random_sentence, rect_mask, rect_polygons, write_image, write_json

SPLITS = ("train", "val", "testA", "testB")


def write(out: str | Path, seed: int = 0, n_images: int = 3) -> dict:
    """Returns ``{"root", "samples": {split: [{"id", "image_id", "text", "mask"}]}, "train_refs": {split: n}}``."""
    out, rng = Path(out), np.random.default_rng(seed)
    images, annotations, masks, refs = [], [], {}, []
    for i in range(n_images):
        image_id = 500 + i
        h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
        name = f"COCO_train2014_{image_id:012d}.jpg"
        write_image(out / "images" / "train2014" / name, rng, h, w)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for k in range(3):
            ann_id, crowd = image_id * 10 + k, int(k == 2)
            mask = rect_mask(h, w, rect := random_rects(rng, h, w, 1))
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": crowd, "area": float(mask.sum()),
                                "segmentation": encode_rle(mask) if crowd else rect_polygons(rect), "bbox": [0, 0, 1, 1]})
            masks[ann_id] = mask
        # single, multi (k=0 and 1), no-target, and one naming the crowd annotation too
        for ann_ids in ([image_id * 10], [image_id * 10, image_id * 10 + 1], [-1], [image_id * 10 + 1, image_id * 10 + 2]):
            ref_id = len(refs)
            sentences = [{"sent_id": ref_id * 10 + s, "sent": (t := random_sentence(rng)), "raw": t, "tokens": t.split()}
                         for s in range(int(rng.integers(1, 3)))]
            refs.append({"ref_id": ref_id, "image_id": image_id, "ann_id": ann_ids, "category_id": [1],
                         "split": SPLITS[(ref_id + ref_id // 4) % len(SPLITS)], "sentences": sentences, "no_target": ann_ids == [-1],
                         "sent_ids": [s["sent_id"] for s in sentences], "file_name": name})
    write_json(out / "grefcoco" / "instances.json",
               {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]})
    write_json(out / "grefcoco" / "grefs(unc).json", refs)
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    samples = {}
    for split in SPLITS:
        samples[split] = []
        for ref in (r for r in refs if r["split"] == split):
            target = np.zeros(sizes[ref["image_id"]], dtype=bool)
            for a in ref["ann_id"]:
                if a != -1 and a % 10 != 2:  # crowd annotations (k == 2) are left out of the union
                    target |= masks[a]
            samples[split] += [{"id": str(s["sent_id"]), "image_id": str(ref["image_id"]), "text": s["sent"], "mask": target}
                               for s in ref["sentences"]]
    return {"root": out, "samples": samples, "train_refs": {s: sum(r["split"] == s for r in refs) for s in SPLITS}}


if __name__ == "__main__":
    sys.exit(cli(write))
