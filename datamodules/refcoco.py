"""RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF (``refer`` layout) and gRefCOCO.

Layout (``root`` is the refer toolkit's ``data`` folder)::

    root/refcoco/refs(unc).p  root/refcoco/instances.json   (also refcoco+; refcocog: umd|google; refclef: unc|berkeley)
    root/images/mscoco/images/train2014/COCO_train2014_*.jpg   (refclef: root/images/saiapr_tc-12/...)
    root/grefcoco/grefs(unc).json  root/grefcoco/instances.json  root/images/train2014/...

Ground truth follows the official evaluation (spec §8): the ref's annotation, all its polygons
united (RLE for RefCLEF), an empty segmentation gives an empty mask. gRefCOCO: union of all target
annotations (crowd ones excluded, as its toolkit does), empty for no-target expressions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import DatasetError, FileDataModule, SampleDataset, coco_mask, load_json, require_file
from datamodules.schema import ID, check_coco, check_refs
from evf.config_errors import ConfigError
from evf.safe_pickle import load_plain_pickle

DATASETS = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("umd", "google"),
            "refclef": ("unc", "berkeley")}
TINY = {"root": "fixture", "batch_size": 2}


def in_split(ref_split: str, split: str) -> bool:
    """The refer toolkit's split rule: ``testA`` also takes ``testAB``; ``test`` takes every test split."""
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    if split == "test":
        return "test" in ref_split
    return ref_split == split


def sentence_text(sentence: dict) -> str:
    return str(sentence.get("sent", sentence.get("raw", ""))).strip()


class ReferDataset(SampleDataset):
    """One sample per sentence (eval) or per ref with a seeded random sentence (train)."""

    def __init__(self, refs: list[dict], instances: dict, image_dir: Path, split: str, source: Path,
                 train: bool = False, seed: int = 0):
        super().__init__(train, seed)
        self.image_dir, self.source = image_dir, source
        splits = sorted({str(r.get("split")) for r in refs})
        self.refs = [r for r in refs if in_split(str(r.get("split")), split)]
        if not self.refs:
            raise DatasetError(f"{source}: no refs in split {split!r}; splits present: {', '.join(splits)}")
        self.images = {img["id"]: img for img in instances["images"]}
        self.anns = {ann["id"]: ann for ann in instances["annotations"]}
        if train:
            self.items = list(range(len(self.refs)))
        else:
            self.items = [(r, s) for r, ref in enumerate(self.refs) for s in range(len(ref["sentences"]))]

    def ref_of(self, item: int) -> dict:
        return self.refs[self.items[item] if self.train else self.items[item][0]]

    def image_info(self, ref: dict) -> dict:
        if ref["image_id"] not in self.images:
            raise DatasetError(f"{self.source}: ref {ref['ref_id']} names image {ref['image_id']}, "
                             "absent from instances.json")
        return self.images[ref["image_id"]]

    def image_path(self, item: int) -> Path:
        return self.image_dir / self.image_info(self.ref_of(item))["file_name"]

    def ref_mask(self, ref: dict, info: dict) -> np.ndarray:
        ann_id = ref["ann_id"]
        if ann_id not in self.anns:
            raise DatasetError(f"{self.source}: ref {ref['ref_id']} names annotation {ann_id}, "
                             "absent from instances.json")
        return self.segmentation_mask(ann_id, info)

    def segmentation_mask(self, ann_id, info: dict) -> np.ndarray:
        """One annotation's mask; a segmentation it cannot decode names instances.json and the annotation."""
        try:
            return coco_mask(self.anns[ann_id].get("segmentation"), info["height"], info["width"])
        except DatasetError as exc:
            raise DatasetError(f"{self.source.parent / 'instances.json'}: annotation {ann_id}: {exc}") from None

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        ref = self.ref_of(item)
        if not ref["sentences"]:
            raise DatasetError(f"{self.source}: ref {ref['ref_id']} has no sentences")
        s = int(rng.integers(len(ref["sentences"]))) if self.train else self.items[item][1]
        sentence = ref["sentences"][s]
        info = self.image_info(ref)
        return {"mask": self.ref_mask(ref, info), "text": sentence_text(sentence),
                "id": str(sentence.get("sent_id", f"{ref['ref_id']}-{s}")), "image_id": str(ref["image_id"])}


class GReferDataset(ReferDataset):
    """gRefCOCO: ``ann_id`` is a list; ``[-1]`` (or ``no_target``) means the expression names nothing."""

    allow_empty_masks = True

    def ref_mask(self, ref: dict, info: dict) -> np.ndarray:
        ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        mask = np.zeros((info["height"], info["width"]), dtype=bool)
        if ref.get("no_target") or ann_ids == [-1]:
            return mask
        for ann_id in ann_ids:
            if ann_id not in self.anns:
                raise DatasetError(f"{self.source}: ref {ref['ref_id']} names annotation {ann_id}, "
                                 "absent from instances.json")
            ann = self.anns[ann_id]
            if not ann.get("iscrowd", 0):
                mask |= self.segmentation_mask(ann_id, info)
        return mask


@DATAMODULES.register("refcoco", tiny=TINY)
class RefCocoDataModule(FileDataModule):
    """RefCOCO family in the refer layout.

    Args:
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or ``refclef``.
        split_by: ``unc`` (RefCOCO/+/CLEF), ``umd`` or ``google`` (RefCOCOg), ``berkeley`` (RefCLEF).
        image_root: images folder; default ``root/images/mscoco/images/train2014``
            (``root/images/saiapr_tc-12`` for RefCLEF).
        Splits: ``train``, ``val``, ``testA``, ``testB``, ``test`` (as the dataset provides them).
    """

    fixture = "refcoco"

    def __init__(self, root: str, dataset: str = "refcoco", split_by: str = "unc", image_root: str | None = None,
                 seed: int = 0, augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        if dataset in DATASETS and split_by not in DATASETS[dataset]:
            raise ConfigError(f"{dataset} has no {split_by!r} split; choose from {DATASETS[dataset]}")
        self.dataset_name, self.split_by = dataset, split_by
        default = "images/saiapr_tc-12" if dataset == "refclef" else "images/mscoco/images/train2014"
        self.image_dir = Path(image_root) if image_root else self.root / default
        self._files: tuple[list, dict, Path] | None = None

    def refs_file(self) -> Path:
        return self.root / self.dataset_name / f"refs({self.split_by}).p"

    def load_refs(self, path: Path) -> list[dict]:
        return check_refs(load_plain_pickle(require_file(path, "refs file")), path)

    def files(self) -> tuple[list, dict, Path]:
        if self._files is None:
            refs_file = self.refs_file()
            refs = self.load_refs(refs_file)
            path = self.root / self.dataset_name / "instances.json"
            instances = check_coco(load_json(path, "instances file"), path, {"id": ID})
            self._files = (refs, instances, refs_file)
        return self._files

    dataset_class = ReferDataset

    def build(self, split: str, train: bool) -> ReferDataset:
        refs, instances, source = self.files()
        return self.dataset_class(refs, instances, self.image_dir, split, source, train=train, seed=self.seed)


@DATAMODULES.register("grefcoco", tiny=TINY)
class GRefCocoDataModule(RefCocoDataModule):
    """gRefCOCO (multi-target and no-target expressions): ``root/grefcoco/grefs(unc).json`` + ``instances.json``,
    images in ``root/images/train2014`` unless ``image_root`` is given."""

    dataset_class = GReferDataset
    fixture = "grefcoco"

    def __init__(self, root: str, dataset: str = "grefcoco", split_by: str = "unc", image_root: str | None = None,
                 seed: int = 0, augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_split: str = "train", val_split: str = "val", test_split: str = "testA",
                 embedding_cache: str | None = None):
        super().__init__(root, dataset, split_by, image_root or None, seed, augment, batch_size, eval_batch_size,
                         num_workers, train_split, val_split,
                         test_split, embedding_cache)
        if not image_root:
            self.image_dir = self.root / "images" / "train2014"

    def refs_file(self) -> Path:
        json_file = self.root / self.dataset_name / f"grefs({self.split_by}).json"
        pickle_file = json_file.with_suffix(".p")
        return pickle_file if pickle_file.is_file() and not json_file.is_file() else json_file

    def load_refs(self, path: Path) -> list[dict]:
        if path.suffix == ".p":
            return super().load_refs(path)
        return check_refs(load_json(path, "grefs file"), path, ann_id=(*ID, list))
