"""Semantic-level data: ADE20K (SceneParsing, 150 classes) and Mapillary Vistas, as ``"[semantic] {category}"``.

A sample's mask is every pixel of one category present in the image (paper Sec. A.2/A.3). Train
mode: one item per image, the category drawn with the seeded stream; eval mode: one sample per
(image, present category). ``LabelMapDataset`` is shared with the human-parsing datamodule.

Layouts::

    ADEChallengeData2016/objectInfo150.txt (or .csv)  images/{training,validation}/*.jpg  annotations/{...}/*.png
    vistas/config.json  {training,validation}/images/*.jpg  {training,validation}/labels/*.png   (v1.2)
    vistas/config_v2.0.json  {training,validation}/v2.0/labels/*.png                              (v2.0)
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import (
    DatasetFileError,
    FileDataModule,
    SampleDataset,
    load_json,
    require_dir,
    require_file,
    semantic_prompt,
)
from evf.io import ImageReadError, read_mask

SPLIT_FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
TINY = {"root": "fixture", "batch_size": 2}


class LabelMapDataset(SampleDataset):
    """Images with index-PNG label maps. ``pairs``: ``(image_id, image_path, label_path)``;
    ``names``: label value -> category words; values absent from ``names`` are ignored."""

    def __init__(self, pairs: list[tuple[str, Path, Path]], names: dict[int, str], train: bool = False,
                 seed: int = 0, min_pixels: int = 1):
        super().__init__(train, seed)
        self.pairs, self.names, self.min_pixels = pairs, names, min_pixels
        if train:
            self.items = list(range(len(pairs)))
        else:  # reading every label map once is the price of one sample per present category
            self.items = [(i, v) for i in range(len(pairs)) for v in self.present(self.labels(i))]

    def labels(self, index: int) -> np.ndarray:
        path = self.pairs[index][2]
        labels = read_mask(path)
        if labels.ndim != 2:
            raise ImageReadError(f"label map {path} has shape {labels.shape}; expected one index channel")
        return labels

    def present(self, labels: np.ndarray) -> list[int]:
        values, counts = np.unique(labels, return_counts=True)
        return [int(v) for v, c in zip(values, counts) if int(v) in self.names and c >= self.min_pixels]

    def image_index(self, item: int) -> int:
        return self.items[item] if self.train else self.items[item][0]

    def image_path(self, item: int) -> Path:
        return self.pairs[self.image_index(item)][1]

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        index = self.image_index(item)
        labels = self.labels(index)
        if self.train:
            present = self.present(labels)
            if not present:  # nothing to name here: an empty "[semantic] x" would teach nothing
                return {"mask": np.zeros(labels.shape, dtype=bool), "text": "", "id": "",
                        "image_id": self.pairs[index][0], "skip": True}
            value = present[int(rng.integers(len(present)))]
        else:
            value = self.items[item][1]
        image_id = self.pairs[index][0]
        return {"mask": labels == value, "text": semantic_prompt(self.names[value]), "id": f"{image_id}:{value}",
                "image_id": image_id}

    def load(self, item: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        sample = super().load(item, rng)
        # train mode: an image without any named category hands over to the next image (same stream)
        for step in range(1, len(self.items)):
            if not sample.pop("skip", False):
                break
            sample = super().load((item + step) % len(self.items), rng)
        return sample


def paired_files(image_dir: Path, label_dir: Path, image_suffix: str = ".jpg") -> list[tuple[str, Path, Path]]:
    """One entry per label PNG (sorted); the image of the same stem need not exist yet (``check`` reports it)."""
    require_dir(label_dir, "label folder")
    require_dir(image_dir, "image folder")
    labels = sorted(label_dir.glob("*.png"))
    if not labels:
        raise FileNotFoundError(f"no label PNGs in {label_dir}")
    return [(p.stem, image_dir / (p.stem + image_suffix), p) for p in labels]


def read_ade_classes(path: Path) -> dict[int, str]:
    """objectInfo150.txt (tab-separated ``Idx Ratio Train Val Name``) or objectInfo150.csv (``...,Name`` with ``;``):
    label value -> first synonym (``"building, edifice"`` -> ``"building"``)."""
    require_file(path, "ADE20K class list")
    names = {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t" if path.suffix == ".txt" else ",")
        for row in rows:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if "Idx" not in row or "Name" not in row:
                raise DatasetFileError(f"{path}: expected 'Idx' and 'Name' columns, got {sorted(row)}")
            names[int(row["Idx"])] = row["Name"].replace(";", ",").split(",")[0].strip()
    if not names:
        raise DatasetFileError(f"{path}: no classes listed")
    return names


@DATAMODULES.register("ade20k", tiny=TINY)
class ADE20KDataModule(FileDataModule):
    """ADE20K SceneParsing (``ADEChallengeData2016``); label 0 ("other") is never a target.

    Args:
        class_file: relative to root; ``objectInfo150.txt`` from the official zip, or the ``.csv`` variant.
        min_pixels: a category counts as present from this many pixels on.
    """

    fixture = "ade20k"

    def __init__(self, root: str, class_file: str = "objectInfo150.txt", min_pixels: int = 1, seed: int = 0,
                 augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "val",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        self.class_file, self.min_pixels = class_file, min_pixels

    def build(self, split: str, train: bool) -> LabelMapDataset:
        folder = SPLIT_FOLDERS.get(split, split)
        pairs = paired_files(self.root / "images" / folder, self.root / "annotations" / folder)
        return LabelMapDataset(pairs, read_ade_classes(self.root / self.class_file), train, self.seed, self.min_pixels)


def read_vistas_classes(path: Path) -> dict[int, str]:
    """config.json ``labels`` list: label value = list position; names from ``readable``, lower-cased;
    labels with ``evaluate: false`` (unlabeled, ego vehicle, ...) are left out."""
    config = load_json(path, "Mapillary Vistas config")
    labels = config.get("labels") if isinstance(config, dict) else None
    if not isinstance(labels, list) or not labels:
        raise DatasetFileError(f"{path}: expected a non-empty 'labels' list")
    return {i: str(lab.get("readable") or lab["name"]).strip().lower() for i, lab in enumerate(labels)
            if lab.get("evaluate", True)}


@DATAMODULES.register("mapillary", tiny=TINY)
class MapillaryVistasDataModule(FileDataModule):
    """Mapillary Vistas. ``config``/``labels_dir`` pick the release: ``config.json`` + ``labels`` (v1.2) or
    ``config_v2.0.json`` + ``v2.0/labels`` (v2.0)."""

    fixture = "mapillary"

    def __init__(self, root: str, config: str = "config.json", labels_dir: str = "labels", min_pixels: int = 1,
                 seed: int = 0, augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_split: str = "train", val_split: str = "val", test_split: str = "val",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        self.config, self.labels_dir, self.min_pixels = config, labels_dir, min_pixels

    def build(self, split: str, train: bool) -> LabelMapDataset:
        folder = self.root / SPLIT_FOLDERS.get(split, split)
        pairs = paired_files(folder / "images", folder / self.labels_dir)
        return LabelMapDataset(pairs, read_vistas_classes(self.root / self.config), train, self.seed, self.min_pixels)
