"""Part-level data from COCO-format part annotations: Pascal-Part and PartImageNet.

Instances of one part category in an image are united into one semantic mask (paper Sec. A.2:
"merge instance masks of the same category"), prompted as ``"[semantic] {object} {part}"``.
Category names: Pascal-Part's common COCO conversion spells them ``"person:arm"``; PartImageNet
names them ``"Quadruped Head"`` with ``supercategory`` ``"Quadruped"``. Underscores become spaces.

Layouts (``ann_file`` and ``image_dir`` are templates with ``{split}``)::

    pascal_part:  {split}.json               VOCdevkit/VOC2010/JPEGImages/*.jpg
    partimagenet: annotations/{split}/{split}.json   images/{split}/*.JPEG
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import (
    DatasetError,
    FileDataModule,
    SampleDataset,
    coco_mask,
    load_json,
    semantic_prompt,
)
from datamodules.schema import ID, check_coco

TINY = {"root": "fixture", "batch_size": 2}


def part_phrase(category: dict) -> str:
    """``{"name": "person:arm"}`` -> ``"person arm"``;
    ``{"name": "Head", "supercategory": "Fish"}`` -> ``"fish head"``."""
    name = str(category["name"]).replace("_", " ").strip()
    if ":" in name:
        obj, part = name.split(":", 1)
        return f"{obj.strip()} {part.strip()}".lower()
    parent = str(category.get("supercategory") or "").replace("_", " ").strip()
    if parent and not name.lower().startswith(parent.lower()):
        name = f"{parent} {name}"
    return name.lower()


def coco_tables(coco: Any, source: Path) -> tuple[dict, dict, dict]:
    """images by id, categories by id, ``{image_id: {category_id: [annotations]}}``."""
    check_coco(coco, source, {"image_id": ID, "category_id": ID}, categories=True)
    images = {img["id"]: img for img in coco["images"]}
    categories = {cat["id"]: cat for cat in coco["categories"]}
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for ann in coco["annotations"]:
        if ann["image_id"] not in images or ann["category_id"] not in categories:
            raise DatasetError(f"{source}: annotation {ann.get('id')} names an unknown image or category")
        grouped[ann["image_id"]][ann["category_id"]].append(ann)
    return images, categories, grouped


class CocoSemanticDataset(SampleDataset):
    """Eval: one sample per (image, category); train: one item per image, category from the seeded stream."""

    def __init__(self, coco: dict, image_dir: Path, source: Path, train: bool = False, seed: int = 0):
        super().__init__(train, seed)
        self.image_dir, self.source = image_dir, source
        self.images, categories, grouped = coco_tables(coco, source)
        self.phrases = {cid: part_phrase(cat) for cid, cat in categories.items()}
        self.groups = {img: dict(sorted(cats.items())) for img, cats in grouped.items()}
        image_ids = [i for i in self.images if i in self.groups]  # images without annotations have no sample
        if train:
            self.items = image_ids
        else:
            self.items = [(i, c) for i in image_ids for c in self.groups[i]]
        if not self.items:
            raise DatasetError(f"{source}: no annotated images")

    def image_id(self, item: int):
        return self.items[item] if self.train else self.items[item][0]

    def image_path(self, item: int) -> Path:
        return self.image_dir / self.images[self.image_id(item)]["file_name"]

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image_id = self.image_id(item)
        if self.train:
            cats = list(self.groups[image_id])
            category = cats[int(rng.integers(len(cats)))]
        else:
            category = self.items[item][1]
        info = self.images[image_id]
        mask = np.zeros((info["height"], info["width"]), dtype=bool)
        for ann in self.groups[image_id][category]:
            mask |= coco_mask(ann.get("segmentation"), info["height"], info["width"])
        return {"mask": mask, "text": semantic_prompt(self.phrases[category]), "id": f"{image_id}:{category}",
                "image_id": str(image_id)}


class CocoPartDataModule(FileDataModule):
    default_ann_file = "{split}.json"
    default_image_dir = "images/{split}"

    def __init__(self, root: str, ann_file: str | None = None, image_dir: str | None = None, seed: int = 0,
                 augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "val",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        self.ann_file = ann_file or self.default_ann_file
        self.image_dir = image_dir or self.default_image_dir

    def build(self, split: str, train: bool) -> CocoSemanticDataset:
        source = self.root / self.ann_file.format(split=split)
        return CocoSemanticDataset(load_json(source, "part annotation file"),
                                   self.root / self.image_dir.format(split=split), source, train, self.seed)


@DATAMODULES.register("pascal_part", tiny=TINY)
class PascalPartDataModule(CocoPartDataModule):
    """Pascal-Part in the common COCO conversion (``train.json``/``val.json``, VOC2010 images)."""

    fixture = "pascal_part"
    default_ann_file = "{split}.json"
    default_image_dir = "VOCdevkit/VOC2010/JPEGImages"


@DATAMODULES.register("partimagenet", tiny=TINY)
class PartImageNetDataModule(CocoPartDataModule):
    """PartImageNet (official release: ``annotations/{split}/{split}.json``, ``images/{split}``)."""

    fixture = "partimagenet"
    default_ann_file = "annotations/{split}/{split}.json"
    default_image_dir = "images/{split}"
