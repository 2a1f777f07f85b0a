"""Tiny RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF in the refer layout (``refs(*).p`` + ``instances.json``).

RefCOCO-family annotations are COCO polygons (several per object, united; one empty
segmentation); RefCLEF's are lists of compressed-RLE dicts (``[{"size": [h, w], "counts": str}]``), as the
refer toolkit's real ``refclef/instances.json`` stores its saiapr masks. The refs pickles are written as
Python 2 wrote the originals: text as UTF-8 byte strings (``python2_pickle``).

    python -m datamodules.testing.refcoco OUT
"""
from __future__ import annotations

import io
import pickle
import struct
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np

from datamodules.common import encode_rle
from datamodules.testing import cli, random_rects, random_sentence, rect_mask, rect_polygons, write_image, write_json

# (dataset, split_by, splits, image folder under root, RLE masks?)
LAYOUT = [
    ("refcoco", "unc", ("train", "val", "testA", "testB"), "images/mscoco/images/train2014", False),
    ("refcoco+", "unc", ("train", "val", "testA", "testB"), "images/mscoco/images/train2014", False),
    ("refcocog", "umd", ("train", "val", "test"), "images/mscoco/images/train2014", False),
    ("refcocog", "google", ("train", "val"), "images/mscoco/images/train2014", False),
    ("refclef", "unc", ("train", "val", "testA", "testB"), "images/saiapr_tc-12", True),
]
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]


class Python2Pickler(pickle._Pickler):
    """Pickles ``str`` as Python 2 pickled its byte ``str``: UTF-8 bytes under (SHORT_)BINSTRING opcodes,
    with no encoding recorded (the pure-Python pickler, since the C one has no per-type hook)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_byte_str(self, obj: str) -> None:
        data = obj.encode("utf-8")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_byte_str


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def image_file(dataset: str, image_id: int) -> str:
    if dataset == "refclef":
        return f"{image_id // 1000:02d}/images/{image_id}.jpg"
    return f"COCO_train2014_{image_id:012d}.jpg"


def write_instances(out: Path, dataset: str, folder: str, rng: np.random.Generator, rle: bool, n_images: int = 4):
    """Images + two annotations per image (the very first one with an empty segmentation if polygons)."""
    images, annotations, masks = [], [], {}
    for i in range(n_images):
        image_id = (9000 if rle else 100) + i
        h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
        write_image(out / folder / image_file(dataset, image_id), rng, h, w)
        images.append({"id": image_id, "file_name": image_file(dataset, image_id), "height": h, "width": w})
        for k in range(2):
            ann_id = image_id * 10 + k
            rects = random_rects(rng, h, w, int(rng.integers(1, 3)))
            if not rle and i == 0 and k == 0:
                rects = []  # an empty segmentation: ground truth is an empty mask (spec §8)
            mask = rect_mask(h, w, rects)
            segmentation = [encode_rle(mask)] if rle else rect_polygons(rects)
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)] if mask.any() else [0.0] * 4
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": CATEGORIES[k]["id"], "iscrowd": 0,
                                "segmentation": segmentation, "area": float(mask.sum()), "bbox": bbox})
            masks[ann_id] = mask
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, masks


def make_refs(annotations: list[dict], splits: tuple[str, ...], rng: np.random.Generator, sent_base: int) -> list[dict]:
    refs, sent_id = [], sent_base
    for r, ann in enumerate(annotations):
        sentences = []
        for _ in range(int(rng.integers(1, 4))):
            text = random_sentence(rng)
            sentences.append({"tokens": text.split(), "raw": text.capitalize() + ".", "sent_id": sent_id, "sent": text})
            sent_id += 1
        refs.append({"ref_id": sent_base + r, "ann_id": ann["id"], "image_id": ann["image_id"],
                     "category_id": ann["category_id"], "split": splits[r % len(splits)],
                     "file_name": f"COCO_train2014_{ann['image_id']:012d}_{ann['id']}.jpg",
                     "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences]})
    return refs


def write(out: str | Path, seed: int = 0) -> dict:
    """Returns ``{"root", "refs": {(dataset, split_by): refs}, "samples": {(dataset, split_by, split): [...]},
    "train_refs": {(dataset, split_by): n}}``; samples are per sentence, in the datamodule's eval order."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    written, all_refs, samples, train_refs = {}, {}, {}, {}
    for n, (dataset, split_by, splits, folder, rle) in enumerate(LAYOUT):
        if folder not in written:  # RefCOCO, RefCOCO+ and RefCOCOg annotate the same COCO images
            written[folder] = write_instances(out, dataset, folder, rng, rle)
        instances, masks = written[folder]
        write_json(out / dataset / "instances.json", instances)
        refs = make_refs(instances["annotations"], splits, rng, sent_base=1000 * (n + 1))
        (out / dataset).mkdir(parents=True, exist_ok=True)
        (out / dataset / f"refs({split_by}).p").write_bytes(python2_pickle(refs))
        all_refs[(dataset, split_by)] = refs
        train_refs[(dataset, split_by)] = sum(r["split"] == "train" for r in refs)
        for split in (*splits, "test") if "testA" in splits else splits:
            samples[(dataset, split_by, split)] = [
                {"id": str(s["sent_id"]), "image_id": str(r["image_id"]), "text": s["sent"], "mask": masks[r["ann_id"]]}
                for r in refs if r["split"] == split or (split == "test" and r["split"].startswith("test"))
                for s in r["sentences"]]
    return {"root": out, "refs": all_refs, "samples": samples, "train_refs": train_refs}


if __name__ == "__main__":
    sys.exit(cli(write))
