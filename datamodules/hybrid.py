"""The paper's hybrid training set: a weighted mixture of any registered datamodules.

Sample ``p`` of the training stream (``p = epoch * samples_per_epoch + k``) is a pure function of
``(seed, p)``: the source is drawn with probability ``ratio / sum(ratios)``, then an item of that
source and its random choices (sentence, category, augmentation). A restart with the same seed
replays the same sequence. YAML::

    data:
      class_path: datamodules.HybridDataModule
      init_args:
        samples_per_epoch: 100000
        eval_source: refcoco
        sources:
          refcoco: {type: refcoco, ratio: 4, root: data/refer, dataset: refcoco}
          ade20k:  {type: ade20k, ratio: 1, root: data/ADEChallengeData2016}

``type`` is a ``DATAMODULES`` name or a dotted class path; the other keys are its arguments
(its batch settings are ignored: the hybrid's own apply). Validation and test read ``eval_source``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.base import DATAMODULES, RefSegDataModule
from datamodules.common import EpochSampler
from evf.config_errors import ConfigError, nearest
from evf.registry import import_class


def build_source(name: str, spec: dict[str, Any]) -> RefSegDataModule:
    spec = dict(spec)
    kind = spec.pop("type", None)
    spec.pop("ratio", None)
    if not isinstance(kind, str):
        raise ConfigError(f"hybrid source {name!r} needs 'type': a datamodule name "
                         f"({', '.join(DATAMODULES)}) or class path")
    if kind in DATAMODULES:
        cls = DATAMODULES.get(kind).cls
    else:
        try:
            cls = import_class(kind)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"hybrid source {name!r}: cannot load datamodule {kind!r} ({exc})") from None
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for key in spec:
            if key not in params:
                near = nearest(key, params)
                hint = f"did you mean {near!r}? " if near else ""
                raise ConfigError(f"hybrid source {name!r}: {cls.__name__} has no argument {key!r}; {hint}"
                                  f"it takes {', '.join(params)}")
    return cls(**spec)


def source_image_id(source: str, image_id) -> str:
    return f"{source}/{image_id}"


class HybridDataset(Dataset):
    """Positions ``p >= 0`` -> samples; ``len`` is one epoch. ``augment[i]`` is source i's augmentation."""

    def __init__(self, names: list[str], datasets: list[Dataset], ratios: list[float], length: int, seed: int = 0,
                 augment: list[Callable[[dict], dict] | None] | None = None):
        weights = np.asarray(ratios, dtype=np.float64)
        if len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"hybrid ratios must be non-negative with a positive sum, got {ratios}")
        empty = [n for n, d in zip(names, datasets) if len(d) == 0]
        if empty:
            raise ConfigError(f"hybrid sources without samples: {', '.join(empty)}")
        self.names, self.datasets, self.length, self.seed = names, datasets, length, seed
        self.cumulative = np.cumsum(weights / weights.sum())
        self.augment = augment or [None] * len(datasets)

    def __len__(self) -> int:
        return self.length

    def choose(self, position: int) -> tuple[int, int, np.random.Generator]:
        """(source index, item of that source, generator for the item's own random choices)."""
        rng = np.random.default_rng([self.seed, position])
        source = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.datasets) - 1)
        return source, int(rng.integers(len(self.datasets[source]))), rng

    def __getitem__(self, position: int) -> dict[str, Any]:
        if position < 0:
            raise IndexError(position)
        source, item, rng = self.choose(position)
        dataset = self.datasets[source]
        sample = dataset.load(item, rng) if hasattr(dataset, "load") else dict(dataset[item])
        if self.augment[source] is not None:
            sample = self.augment[source](sample)
        sample["source"] = self.names[source]
        if sample.get("image_id") is not None:  # ids are unique within a source only
            sample["image_id"] = source_image_id(self.names[source], sample["image_id"])
        return sample


@DATAMODULES.register("hybrid", tiny={"sources": {"refcoco": {"type": "refcoco", "ratio": 2, "root": "fixture"},
                                                  "ade20k": {"type": "ade20k", "ratio": 1, "root": "fixture"}},
                                      "samples_per_epoch": 8, "batch_size": 2})
class HybridDataModule(RefSegDataModule):
    """Args:
        sources: ``{name: {type, ratio, **datamodule arguments}}``.
        samples_per_epoch: length of one training epoch (the stream itself is endless).
        eval_source: the source whose ``val_split``/``test_split`` validation and test read (default: the first).
    """

    def __init__(self, sources: dict[str, dict[str, Any]], samples_per_epoch: int = 10000, seed: int = 0,
                 eval_source: str | None = None, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, val_split: str = "val", test_split: str = "test",
                 embedding_cache: str | None = None):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         val_split=val_split, test_split=test_split, embedding_cache=embedding_cache)
        if not sources:
            raise ConfigError("a hybrid datamodule needs at least one source")
        self.ratios = {name: float(spec.get("ratio", 1.0)) for name, spec in sources.items()}
        self.sources = {name: build_source(name, spec) for name, spec in sources.items()}
        self.eval_source = eval_source or next(iter(sources))
        if self.eval_source not in self.sources:
            raise ConfigError(f"eval_source {self.eval_source!r} is not one of the sources {sorted(self.sources)}")
        self.samples_per_epoch, self.seed = samples_per_epoch, seed

    def train_set(self) -> HybridDataset:
        names = list(self.sources)
        datasets = [self.sources[n].raw_dataset(self.sources[n].train_split) for n in names]
        augment = [self.sources[n].augmentation() for n in names]
        ratios = [self.ratios[n] for n in names]
        return HybridDataset(names, datasets, ratios, self.samples_per_epoch, self.seed, augment)

    def raw_dataset(self, split: str) -> Dataset:
        if split == self.train_split:
            return self.train_set()
        return self.sources[self.eval_source].raw_dataset(split)

    def cache_images(self, split: str) -> Iterator[dict]:
        """Train: every image of every source (the stream draws any of them, in any epoch), under the
        source-prefixed ids the stream's samples carry; validation and test: the eval source's."""
        if split != self.train_split:
            yield from self.raw_dataset(split)
            return
        for name, source in self.sources.items():
            dataset = source.raw_dataset(source.train_split)
            for k in range(len(dataset)):
                sample = dict(dataset[k])
                sample["image_id"] = source_image_id(name, sample.get("image_id"))
                yield sample

    @property
    def geometric_augmentation(self) -> bool:
        return any(getattr(s, "geometric_augmentation", False) for s in self.sources.values())

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset(self.train_split, train=True)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=EpochSampler(len(dataset), self.seed, shuffle=False),
            num_workers=self.num_workers, collate_fn=self.preprocessor.collate, drop_last=False,
            persistent_workers=self.num_workers > 0,
        )
