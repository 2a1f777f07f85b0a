"""Train and evaluate on a dataset of your own: a JSON Lines manifest (``datamodules/custom_manifest.py``,
docs/custom-data.md), optionally beside a COCO ``instances.json`` that its lines name annotations of.

Layout (``root`` is the manifest's folder; paths inside the manifest are relative to it)::

    root/manifest.jsonl   root/images/...   root/masks/...        (masks: any PNG, nonzero = the object)
    root/instances.json                                             (only if lines use annotation_id / image_id)
    root/sam_masks/box_masks_manifest.json                          (written by 'evf prepare custom' for bbox lines)

Eval: one sample per (line, expression); train: one item per line, its expression drawn from the seeded
stream. ``empty: true`` lines give all-zero masks (no such object in the image); ``bbox`` lines read the
SAM mask the pre-pass made of the box (``box_prepass`` below, the Objects365 pre-pass's model code), or the
filled box with ``box_masks=True``.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import DatasetError, FileDataModule, SampleDataset, coco_mask, encode_rle
from datamodules.custom_manifest import Entry, Manifest
from datamodules.objects365 import box_mask, segment_image
from evf.io import ImageReadError, exif_orientation, opened, read_image, read_mask

MASKS_DIR = "sam_masks"
SAVE_EVERY = 50  # images between two writes of the pre-pass output (an interrupted run keeps them)


def box_masks_file(masks_dir: Path, manifest: Path) -> Path:
    return masks_dir / f"box_masks_{manifest.stem}.json"


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image as ``read_image`` returns it (EXIF-rotated), from its header."""
    with opened(path, "image") as im:
        w, h = im.size
        return (w, h) if exif_orientation(im) in (5, 6, 7, 8) else (h, w)


class CustomRefDataset(SampleDataset):
    """One split of a manifest. ``box_masks``: pre-pass masks ``{id: rle}``, or ``True`` for filled boxes."""

    allow_empty_masks = True  # "empty": true lines are no-target expressions

    def __init__(self, manifest: Manifest, split: str, box_masks: dict | bool, train: bool = False, seed: int = 0):
        super().__init__(train, seed)
        self.manifest, self.box_masks = manifest, box_masks
        self.entries = [e for e in manifest.entries if e.split == split]
        if not self.entries:
            raise DatasetError(f"{manifest.path}: no lines in split {split!r}; splits present: {', '.join(manifest.splits())}")
        if box_masks is not True:
            missing = [e for e in self.entries if e.kind == "bbox" and e.id not in box_masks]
            if missing:
                raise DatasetError(f"{manifest.where(missing[0].line)}: bbox line without its SAM mask; run 'evf prepare "
                                   f"custom --root {manifest.root} --backend ...' first (or box_masks=true for box-shaped masks)")
        self.items = list(range(len(self.entries))) if train else [
            (k, s) for k, e in enumerate(self.entries) for s in range(len(e.expressions))]

    def entry(self, item: int) -> Entry:
        return self.entries[self.items[item] if self.train else self.items[item][0]]

    def image_path(self, item: int) -> Path:
        return self.entry(item).image

    def empty_allowed(self, item: int) -> bool:
        """Only declared no-target lines may be empty; an empty decoded mask elsewhere is a labelling slip."""
        return self.entry(item).kind == "empty"

    def problems(self) -> dict[str, list[str]]:
        """Findings of ``evf prepare custom --check`` beyond the per-item ones."""
        lines = {e.line for e in self.entries}
        return {"duplicate ids": [f"{i!r} on lines {', '.join(map(str, ls))}" for i, ls in
                                  self.manifest.duplicate_ids().items() if lines.intersection(ls)]}

    def mask(self, entry: Entry) -> np.ndarray:
        """The target as bool ``[H, W]``; a mask PNG keeps its own size (a mismatch is reported by the caller)."""
        if entry.kind == "mask":
            labels = read_mask(entry.value)
            if labels.ndim == 3:  # colour (+ alpha): any colour channel set; gray + alpha: the gray one
                labels = labels[..., :3] if labels.shape[2] >= 3 else labels[..., :1]
                return labels.any(axis=2)
            return labels != 0
        height, width = entry.size or image_size(entry.image)
        if entry.kind == "empty":
            return np.zeros((height, width), dtype=bool)
        if entry.kind == "bbox":
            if self.box_masks is True:
                return box_mask(entry.value, height, width)
            return coco_mask(self.box_masks[entry.id], height, width)
        if entry.kind == "annotation_id":
            anns = self.manifest.instances()[1]
            mask = np.zeros((height, width), dtype=bool)
            for ann_id in entry.value:
                if anns[ann_id].get("segmentation") in (None, []):
                    raise DatasetError(f"annotation {ann_id} of {self.manifest.instances_path} has no segmentation")
                mask |= coco_mask(anns[ann_id]["segmentation"], height, width)
            return mask
        return coco_mask(entry.value, height, width)  # polygons or an RLE dict

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        entry = self.entry(item)
        try:
            mask = self.mask(entry)
        except (DatasetError, ImageReadError) as exc:
            raise DatasetError(f"{self.manifest.where(entry.line)}: {exc}") from None
        s = int(rng.integers(len(entry.expressions))) if self.train else self.items[item][1]
        sample_id = entry.id if len(entry.expressions) == 1 else f"{entry.id}#{s}"
        return {"mask": mask, "text": entry.expressions[s], "id": sample_id, "image_id": entry.image_id}

    def load(self, item: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """As the base class, with the size check's error naming the manifest line."""
        entry = self.entry(item)
        image = read_image(entry.image)
        sample = self.target(item, rng)
        if sample["mask"].shape != image.shape[:2]:
            (h, w), (mh, mw) = image.shape[:2], sample["mask"].shape
            raise DatasetError(f"{self.manifest.where(entry.line)}: image {entry.image} is {w}x{h} but its target is "
                               f"{mw}x{mh} (w x h)")
        sample["image"] = image
        if rng is not None:
            sample["seed"] = int(rng.integers(2**31))
        return sample


@DATAMODULES.register("custom", tiny={"root": "fixture", "batch_size": 2})
class CustomRefDataModule(FileDataModule):
    """Your own data: a JSON Lines manifest (docs/custom-data.md).

    Args:
        root: the folder holding the manifest (all paths in it are relative to this folder).
        manifest: the manifest file, relative to ``root``.
        instances: the COCO file that ``annotation_id`` / ``image_id`` lines refer to, relative to ``root``.
        image_dir: folder of the COCO images' ``file_name``s, relative to ``root``.
        masks_dir: the ``evf prepare custom`` output folder with the SAM masks of bbox lines (default ``root/sam_masks``).
        box_masks: use bbox lines' filled boxes as masks instead of the pre-pass's SAM masks.
        Splits: the lines' ``split`` values (default ``train``).
    """

    fixture = "custom"

    def __init__(self, root: str, manifest: str = "manifest.jsonl", instances: str = "instances.json",
                 image_dir: str = "", masks_dir: str | None = None, box_masks: bool = False, seed: int = 0,
                 augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        self.manifest_file, self.instances, self.image_dir = self.root / manifest, instances, image_dir
        self.masks_dir = Path(masks_dir) if masks_dir else self.root / MASKS_DIR
        self.box_masks = box_masks
        self._manifest: Manifest | None = None
        self._prepared: dict | None = None

    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest(self.manifest_file, self.instances, self.image_dir)
        return self._manifest

    def available_splits(self) -> list[str]:
        return self.manifest().splits()

    def prepared_masks(self) -> dict | bool:
        """``{line id: rle}`` from the pre-pass (empty when the manifest has no bbox lines), or ``True``."""
        if self.box_masks:
            return True
        if self._prepared is None:
            path = box_masks_file(self.masks_dir, self.manifest_file)
            needed = any(e.kind == "bbox" for e in self.manifest().entries)
            self._prepared = read_box_masks(path) if needed and path.is_file() else {}
        return self._prepared

    def build(self, split: str, train: bool) -> CustomRefDataset:
        return CustomRefDataset(self.manifest(), split, self.prepared_masks(), train, self.seed)


def read_box_masks(path: Path) -> dict:
    from datamodules.common import load_json

    data = load_json(path, "box masks file")
    if not isinstance(data, dict) or not isinstance(data.get("masks"), dict):
        raise DatasetError(f"{path}: not a box masks file of 'evf prepare custom' (no 'masks' object)")
    return data["masks"]


# -- the box -> mask pre-pass (``evf prepare custom``) --------------------------------------------------------------
def box_prepass(root: str, build_backend: Callable[[], Any], backend_name: str, manifest: str = "manifest.jsonl",
                out: str | None = None, device: str = "cpu", progress: bool = True) -> int:
    """Each ``bbox`` line's box -> a mask from the SAM backend's box prompt (``segment_image``, as for Objects365),
    written to ``out/box_masks_<manifest>.json`` as ``{"backend", "masks": {line id: rle}}`` (atomically, every
    ``SAVE_EVERY`` images and at the end). Lines already there are kept, so a rerun finishes an interrupted run.
    Returns the exit code: 1 if an image was unreadable."""
    from tqdm import tqdm

    from datamodules.common import require_dir
    from evf.io import write_text_atomic

    root_dir = require_dir(root, "dataset root")
    parsed = Manifest(root_dir / manifest)
    target = box_masks_file(Path(out) if out else root_dir / MASKS_DIR, parsed.path)
    done = read_box_masks(target) if target.is_file() else {}
    by_image: dict[Path, list[Entry]] = defaultdict(list)
    for entry in parsed.entries:
        if entry.kind == "bbox" and entry.id not in done:
            by_image[entry.image].append(entry)
    boxes = sum(e.kind == "bbox" for e in parsed.entries)
    print(f"{parsed.path}: {boxes} bbox lines, {len(done)} already done, {boxes - len(done)} to do "
          f"on {len(by_image)} images", flush=True)
    backend = build_backend().to(device).eval() if by_image else None
    failed = []
    target.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        write_text_atomic(target, json.dumps({"backend": backend_name, "manifest": str(parsed.path), "masks": done}))

    for k, (path, entries) in enumerate(tqdm(by_image.items(), desc="box prompts", unit="img",
                                             disable=True if not progress else None, file=sys.stderr)):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            failed.append(f"{parsed.where(entries[0].line)}: {exc}")
            continue
        masks = segment_image(backend, image, [e.value for e in entries], device)
        done.update({e.id: encode_rle(m) for e, m in zip(entries, masks)})
        if k % SAVE_EVERY == SAVE_EVERY - 1:
            save()
    save()
    print(f"wrote {target}: {len(done)} of {boxes} box masks")
    for message in failed[:3]:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if failed else 0
