"""Tiny dataset of your own, in both forms ``CustomRefDataModule`` reads (docs/custom-data.md).

``manifest.jsonl``: every target kind (mask PNG in L, P and RGB mode, polygons, a flat polygon, compressed and
uncompressed RLE, bbox, empty), one or several expressions, splits train/val/test, images in a subfolder.
``sam_masks/box_masks_manifest.json`` is what ``evf prepare custom`` writes for the bbox lines (here the filled
boxes, so known pixel for pixel). ``coco.jsonl`` + ``instances.json``: the COCO variant (one annotation,
a union of two, a no-target ``image_id`` line).

    python -m datamodules.testing.custom OUT
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.common import encode_rle
from datamodules.testing import cli, random_rects, random_sentence, rect_mask, rect_polygons, write_image, write_json

SPLITS = ("train", "val", "test")
# per line: target kind, split; the image is line // 2 (two lines per image)
LAYOUT = [("mask", "train"), ("polygons", "train"), ("rle", "train"), ("bbox", "train"), ("empty", "train"),
          ("mask_rgb", "train"), ("flat_polygon", "val"), ("rle_list", "val"), ("mask_palette", "val"),
          ("empty", "val"), ("polygons", "test"), ("bbox", "test")]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def write_mask_png(path: Path, mask: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "rgb":  # a colour-coded mask: the object in red
        pixels = np.zeros((*mask.shape, 3), dtype=np.uint8)
        pixels[mask, 0] = 200
        Image.fromarray(pixels).save(path)
    elif mode == "palette":  # index 3 = the object
        image = Image.frombytes("P", mask.shape[::-1], (mask.astype(np.uint8) * 3).tobytes())
        image.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 0, 255, 0])
        image.save(path)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def target_of(kind: str, rects: list, mask: np.ndarray, name: str, out: Path) -> dict:
    if kind.startswith("mask"):
        write_mask_png(out / "masks" / f"{name}.png", mask, kind.removeprefix("mask_") if "_" in kind else "l")
        return {"mask": f"masks/{name}.png"}
    if kind == "polygons":
        return {"polygons": rect_polygons(rects)}
    if kind == "flat_polygon":
        return {"polygons": rect_polygons(rects[:1])[0]}
    if kind == "rle":
        return {"rle": encode_rle(mask)}
    if kind == "rle_list":
        return {"rle": uncompressed_rle(mask)}
    if kind == "bbox":
        x0, y0, x1, y1 = rects[0]
        return {"bbox": [x0, y0, x1 - x0, y1 - y0]}
    return {"empty": True}


def write(out: str | Path, seed: int = 0) -> dict:
    """Returns ``{"root", "samples": {split: [{"id", "image_id", "text", "mask"}]}, "coco_samples": {...},
    "lines": {split: n}}`` (samples in the datamodule's eval order)."""
    out, rng = Path(out), np.random.default_rng(seed)
    lines, samples, box_masks, sizes = [], {s: [] for s in SPLITS}, {}, {}
    for n, (kind, split) in enumerate(LAYOUT):
        image = f"images/img_{n // 2:02d}.png"
        if image not in sizes:
            sizes[image] = (int(rng.integers(20, 33)), int(rng.integers(20, 33)))
            write_image(out / image, rng, *sizes[image])
        h, w = sizes[image]
        rects = random_rects(rng, h, w, 1 if kind in ("bbox", "flat_polygon") else 2)
        mask = rect_mask(h, w, rects) if kind != "empty" else np.zeros((h, w), dtype=bool)
        texts = [random_sentence(rng) for _ in range(1 + n % 2)]
        line_id = f"obj-{n}"
        line = {"id": line_id, "image": image, **({"expression": texts[0]} if len(texts) == 1 else {"expressions": texts}),
                **target_of(kind, rects, mask, line_id, out), "split": split}
        if split == "train" and n == 0:
            del line["split"]  # the default split
        lines.append(line)
        if kind == "bbox":
            box_masks[line_id] = encode_rle(mask)
        samples[split] += [{"id": line_id if len(texts) == 1 else f"{line_id}#{s}", "image_id": image, "text": t, "mask": mask}
                           for s, t in enumerate(texts)]
    (out / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_json(out / "sam_masks" / "box_masks_manifest.json", {"backend": "filled boxes (fixture)", "masks": box_masks})
    return {"root": out, "samples": samples, "coco_samples": write_coco(out, rng),
            "lines": {s: sum(line.get("split", "train") == s for line in lines) for s in SPLITS}}


def write_coco(out: Path, rng: np.random.Generator) -> dict:
    """``instances.json`` (images under ``coco_images/``) + ``coco.jsonl`` naming its annotations."""
    images, annotations, masks = [], [], {}
    for image_id in (7, 8):
        h, w = int(rng.integers(20, 33)), int(rng.integers(20, 33))
        write_image(out / "coco_images" / f"{image_id}.jpg", rng, h, w)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        for k in range(2):
            rects = random_rects(rng, h, w, 1)
            ann_id = image_id * 10 + k
            masks[ann_id] = rect_mask(h, w, rects)
            segmentation = rect_polygons(rects) if k == 0 else encode_rle(masks[ann_id])
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
                                "bbox": [0, 0, 1, 1], "area": float(masks[ann_id].sum()), "iscrowd": 0})
    write_json(out / "instances.json", {"images": images, "annotations": annotations,
                                        "categories": [{"id": 1, "name": "thing"}]})
    lines = [{"annotation_id": 70, "expressions": ["the first thing", "a thing"], "split": "train"},
             {"annotation_id": [80, 81], "expression": "both things", "split": "val"},
             {"image_id": 8, "expression": "a unicorn", "empty": True, "split": "val"}]
    (out / "coco.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    return {"train": [{"id": "L1#0", "text": "the first thing", "mask": masks[70], "image_id": "7"},
                      {"id": "L1#1", "text": "a thing", "mask": masks[70], "image_id": "7"}],
            "val": [{"id": "L2", "text": "both things", "mask": masks[80] | masks[81], "image_id": "8"},
                    {"id": "L3", "text": "a unicorn", "mask": np.zeros(sizes[8], dtype=bool), "image_id": "8"}]}


if __name__ == "__main__":
    sys.exit(cli(write))
