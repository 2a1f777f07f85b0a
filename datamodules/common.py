"""Shared pieces of the file-backed datamodules: checked paths, COCO masks, seeded sampling.

Randomness (which sentence of a ref, which category of an image, augmentation parameters) is a
pure function of ``(seed, epoch, item)``: train loaders stream positions ``epoch * n + k`` (see
``EpochSampler``), so a restart with the same seed replays exactly the same samples, with any
number of dataloader workers, persistent or not.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.augment import Augmenter, build_augmentation
from datamodules.base import RefSegDataModule
from evf.errors import UserError, first_line
from evf.io import generated_dir, make_temp_sibling, read_image
from evf.tokenizer import SEMANTIC_TOKEN

FIXTURE_ROOT = "fixture"  # root: fixture -> a tiny generated copy of the dataset in its real format


class DatasetError(UserError, ValueError):
    """A dataset's files hold something the loader cannot use (no samples in a split, an annotation naming an
    absent image, a mask of another size ...); names the file."""


class DatasetFileError(DatasetError):
    """A dataset file that cannot be read at all (not JSON, not the expected structure); names the file.
    ``evf prepare --check`` stops on it instead of reporting it split by split."""


def semantic_prompt(*words: str) -> str:
    """``"[semantic] {words}"``: the paper's prompt for semantic- and part-level masks."""
    return " ".join([SEMANTIC_TOKEN, *(w.strip() for w in words if w and w.strip())])


def require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def load_json(path: str | os.PathLike, what: str = "annotation file") -> Any:
    path = require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetFileError(f"{path}: not valid JSON ({first_line(exc, 200)})") from None


def coco_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` -> bool ``[H, W]``.

    Accepted: a list of polygons (COCO, RefCOCO/+/g), a list of RLE dicts (RefCLEF, as the refer
    toolkit stores its saiapr masks), or one RLE dict; RLE ``counts`` compressed (str/bytes) or
    uncompressed (list). Several parts are united, as the refer toolkit sums them; an empty
    segmentation gives an all-False mask (spec §8).
    """
    from pycocotools import mask as mask_utils

    parts = segmentation if isinstance(segmentation, list) else [] if segmentation is None else [segmentation]
    unknown = [p for p in parts if not isinstance(p, (list, dict))]
    if unknown:
        raise DatasetError(f"unknown COCO segmentation part {type(unknown[0]).__name__} (expected polygons or RLE dicts)")
    try:
        polygons = [p for p in parts if isinstance(p, list) and len(p) >= 6]  # pycocotools needs >= 3 points
        rles = [rle_part(p, height, width) for p in parts if isinstance(p, dict)]
        if polygons:
            rles += mask_utils.frPyObjects(polygons, height, width)
        if not rles:
            return np.zeros((height, width), dtype=bool)
        decoded = mask_utils.decode(rles)  # [H, W, K]
    except DatasetError:
        raise
    except (TypeError, ValueError, OverflowError, AttributeError, UnicodeError) as exc:  # pycocotools on malformed input
        raise DatasetError(f"unreadable COCO segmentation ({type(exc).__name__}: {first_line(exc, 120)})") from None
    return decoded.reshape(decoded.shape[0], decoded.shape[1], -1).any(axis=2)


def rle_part(rle: dict, height: int, width: int) -> dict:
    """One RLE dict as pycocotools' decoder takes it (compressed, bytes counts), checked against the image size."""
    from pycocotools import mask as mask_utils

    if "counts" not in rle or "size" not in rle:
        raise DatasetError(f"RLE segmentation without 'counts' and 'size' (keys: {sorted(rle)})")
    size = [int(s) for s in rle["size"]]
    if size != [height, width]:
        raise DatasetError(f"RLE segmentation of size {size} on an image of size {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed
        return mask_utils.frPyObjects(rle, *size)
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode_rle(mask: np.ndarray) -> dict:
    """bool ``[H, W]`` -> compressed COCO RLE with a str ``counts`` (JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


class SampleDataset(Dataset):
    """Base of the file-backed raw datasets.

    Subclasses set ``self.items`` (one entry per sample in eval mode, per group in train mode) and
    implement ``image_path(item)`` and ``target(item, rng) -> {"mask", "text", "id", "image_id"}``;
    ``rng`` is ``None`` in eval mode (deterministic samples). In train mode any index ``p >= 0``
    is accepted: item ``p % n`` of epoch ``p // n``.
    """

    allow_empty_masks = False  # e.g. gRefCOCO's no-target expressions
    items: list

    def __init__(self, train: bool = False, seed: int = 0):
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, item: int) -> Path:
        raise NotImplementedError

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, item: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        path = self.image_path(item)
        image = read_image(path)
        sample = self.target(item, rng)
        if sample["mask"].shape != image.shape[:2]:
            raise DatasetError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but its annotation is "
                             f"{sample['mask'].shape[1]}x{sample['mask'].shape[0]} (w x h)")
        sample["image"] = image
        if rng is not None:
            sample["seed"] = int(rng.integers(2**31))  # augmentation parameters follow the same stream
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if index < 0 or (not self.train and index >= n):
            raise IndexError(index)
        item, epoch = index % n, index // n
        rng = np.random.default_rng([self.seed, epoch, item]) if self.train else None
        return self.load(item, rng)


class EpochSampler(Sampler[int]):
    """Yields stream positions ``epoch * n + k`` over a seeded permutation of ``n`` items.

    ``set_epoch`` is called by Lightning each epoch; loops that never call it advance by one
    epoch per full pass.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        return iter((epoch * self.n + order).tolist())


def resolve_root(root: str | os.PathLike, fixture: str) -> Path:
    """``root`` as a checked folder; ``"fixture"`` writes (once) and returns the tiny generated copy."""
    if str(root) != FIXTURE_ROOT:
        return require_dir(root, "dataset root")
    target = generated_dir() / "fixtures" / fixture
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_sibling(target, folder=True)  # the umask applies (mkdtemp would make it 0700)
        importlib.import_module(f"datamodules.testing.{fixture}").write(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # a concurrent writer won; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class FileDataModule(RefSegDataModule):
    """Base of the datamodules reading a dataset folder.

    Args:
        root: the dataset folder (see docs/datasets.md), or ``"fixture"`` for a tiny generated copy.
        seed: seeds sentence/category choice, shuffling and augmentation per (epoch, item).
        augment: albumentations pipeline for training (preset name or list of ``{name: ..., **kwargs}``;
            see ``datamodules.augment``); ``None`` = no augmentation.
        train_split / val_split / test_split: split names as the dataset spells them.
    """

    fixture = ""  # module of datamodules.testing that writes this format

    def __init__(self, root: str, seed: int = 0, augment: Any = None, batch_size: int = 16,
                 eval_batch_size: int | None = None, num_workers: int = 0, train_split: str = "train",
                 val_split: str = "val", test_split: str = "test",
                 embedding_cache: str | None = None):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         val_split=val_split, test_split=test_split, embedding_cache=embedding_cache)
        self.root = resolve_root(root, self.fixture)
        self.seed = seed
        self.augment = augment
        self.train_split = train_split
        self._pipeline = build_augmentation(augment)
        self._datasets: dict[tuple[str, bool], SampleDataset] = {}

    def build(self, split: str, train: bool) -> SampleDataset:
        raise NotImplementedError

    def raw_dataset(self, split: str, train: bool | None = None) -> SampleDataset:
        """Train mode (one item per ref/image, seeded random choice) for the train split, eval mode otherwise."""
        train = split == self.train_split if train is None else train
        if (split, train) not in self._datasets:
            self._datasets[(split, train)] = self.build(split, train)
        return self._datasets[(split, train)]

    def augmentation(self) -> Callable[[dict], dict] | None:
        return Augmenter(self._pipeline) if self._pipeline is not None else None

    @property
    def geometric_augmentation(self) -> bool:
        return Augmenter(self._pipeline).geometric if self._pipeline is not None else False

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset(self.train_split, train=True)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=EpochSampler(len(dataset), self.seed),
            num_workers=self.num_workers, collate_fn=self.preprocessor.collate, drop_last=False,
            persistent_workers=self.num_workers > 0,
        )
