"""The datamodule plugin slot: datasets yield raw samples, the model's plugins supply the views.

The slot's base class and registry live in the library (``evf fit`` names its datamodule base class); the
datasets themselves live in the ``datamodules`` package, which imports this module (``datamodules.base``
re-exports it). ``evf`` never imports ``datamodules``: configs name a datamodule by ``class_path``.

A raw sample is ``{"image": uint8 [H,W,3], "mask": bool [H,W], "text": str, "id": str, "image_id": str}``.
The datamodule asks the attached ``LightningModule`` for ``model.preprocessor()`` in ``setup``,
so image sizes, normalisation and tokenizers never live here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from evf.config_errors import ConfigError
from evf.data import Preprocessor
from evf.registry import Registry

DATAMODULES = Registry("datamodule")


class ProcessedDataset(Dataset):
    """Raw dataset -> (optional train augmentation on the raw image/mask) -> plugin views."""

    def __init__(self, raw: Dataset, preprocessor: Preprocessor, augment: Callable[[dict], dict] | None = None):
        self.raw = raw
        self.preprocessor = preprocessor
        self.augment = augment

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.raw[index]
        if self.augment is not None:
            sample = self.augment(sample)
        return self.preprocessor(sample)


class RefSegDataModule(L.LightningDataModule):
    """Base class. Subclasses implement ``raw_dataset(split)``; split names are configurable.

    Args:
        batch_size: training batch per process (paper: 16). eval_batch_size defaults to it.
        num_workers: dataloader workers.
        val_split / test_split: which splits ``validate`` and ``test`` read.
        embedding_cache: folder written by ``evf cache``; splits it covers read the frozen SAM image
            embeddings from it instead of running the image encoder (validated against the model).
    """

    train_split = "train"

    def __init__(self, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 val_split: str = "val", test_split: str = "test", embedding_cache: str | None = None):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("num_workers", num_workers)):
            if value is not None and (not isinstance(value, int) or value < (0 if name == "num_workers" else 1)):
                raise ConfigError(f"{name} must be {'>= 0' if name == 'num_workers' else 'a positive number'}, got {value!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.test_split = test_split
        self.preprocessor: Preprocessor | None = None
        self.embedding_cache = embedding_cache
        self.cache = None  # evf.cache.EmbeddingCache once attached

    def raw_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def cache_images(self, split: str) -> Iterable[dict]:
        """The raw samples whose images ``evf cache`` embeds for ``split`` (keyed by their ``image_id``)."""
        return self.raw_dataset(split)

    def augmentation(self) -> Callable[[dict], dict] | None:
        """Train-time augmentation of raw samples (image and mask together); none by default."""
        return None

    @property
    def geometric_augmentation(self) -> bool:
        """True if ``augmentation()`` moves pixels (crop, affine, flip): SAM's view is then not fixed."""
        return False

    def attach(self, preprocessor: Preprocessor, sam=None) -> RefSegDataModule:
        """``sam`` (the model's SAM backend) is needed only to validate an ``embedding_cache`` (against the model's
        SAM and this datamodule's images)."""
        self.preprocessor = preprocessor
        if self.embedding_cache:
            from evf.cache import EmbeddingCache

            self.cache = EmbeddingCache(self.embedding_cache).check(sam, self.geometric_augmentation, datamodule=self)
        return self

    def setup(self, stage: str | None = None) -> None:
        if self.preprocessor is None:
            trainer = getattr(self, "trainer", None)
            if trainer is None or trainer.lightning_module is None:
                raise RuntimeError(f"{type(self).__name__} needs a preprocessor: call attach(model.preprocessor()) first")
            model = trainer.lightning_module.model
            self.attach(model.preprocessor(), sam=model.sam)

    def dataset(self, split: str, train: bool = False) -> ProcessedDataset:
        if self.preprocessor is None:
            self.setup()
        preprocessor = self.preprocessor
        if self.cache is not None and split in self.cache.splits:
            preprocessor = self.cache.preprocessor(preprocessor)
        return ProcessedDataset(self.raw_dataset(split), preprocessor, self.augmentation() if train else None)

    def loader(self, split: str, train: bool = False) -> DataLoader:
        dataset = self.dataset(split, train)
        return DataLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            sampler=None if train else eval_sampler(dataset),
            num_workers=self.num_workers, collate_fn=self.preprocessor.collate, drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_split)


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """Under multi-process evaluation, deal sample k to rank k % world_size with no padding, so every
    sample is counted exactly once (Lightning's DistributedSampler would repeat samples to even out
    ranks). Being a DistributedSampler subclass, Lightning keeps it instead of injecting its own."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)
