"""``evf prepare <dataset> --check``: validate a dataset folder before training on it.

Per split: items (refs or images) and samples, missing images, unreadable images, unreadable or
inconsistent masks/annotations, empty masks and image/annotation size mismatches. Everything is
fatal (the command exits non-zero) except a few empty masks: real annotations hold the odd empty
segmentation, but when more than ``EMPTY_MASK_LIMIT`` of a split's items (and more than one) are
empty, the annotations were not understood (e.g. an unread segmentation format) and training on
them would teach the model to predict nothing. A file that cannot be read at all (not a pickle or JSON,
a pickle holding code, not the expected structure) stops the check with one line naming it (exit 2).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import DatasetFileError, FileDataModule
from datamodules.semantic import LabelMapDataset
from evf.config_errors import ConfigError
from evf.errors import first_line
from evf.io import ImageReadError, read_image
from evf.safe_pickle import PickleReadError

REFER_SPLITS = ("train", "val", "testA", "testB")
# dataset name on the command line -> (registered datamodule, fixed arguments, default splits)
TARGETS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "refcoco": ("refcoco", {"dataset": "refcoco", "split_by": "unc"}, REFER_SPLITS),
    "refcoco+": ("refcoco", {"dataset": "refcoco+", "split_by": "unc"}, REFER_SPLITS),
    "refcocog": ("refcoco", {"dataset": "refcocog", "split_by": "umd"}, ("train", "val", "test")),
    "refclef": ("refcoco", {"dataset": "refclef", "split_by": "unc"}, REFER_SPLITS),
    "grefcoco": ("grefcoco", {}, REFER_SPLITS),
    "ade20k": ("ade20k", {}, ("train", "val")),
    "mapillary": ("mapillary", {}, ("train", "val")),
    "lip": ("humanparsing", {"layout": "lip"}, ("train", "val")),
    "cihp": ("humanparsing", {"layout": "cihp"}, ("train", "val")),
    "pascal_part": ("pascal_part", {}, ("train", "val")),
    "partimagenet": ("partimagenet", {}, ("train", "val")),
    "objects365": ("objects365", {"box_masks": True}, ("train", "val")),
    "custom": ("custom", {}, ()),  # no fixed splits: the manifest's own
    "reasonseg": ("reasonseg", {}, ("train", "val", "test")),
}
SHOWN = 3  # example paths per problem kind
EMPTY_MASK_LIMIT = 0.05  # fraction of a split's items with an empty mask beyond which the split fails


@dataclass
class SplitReport:
    split: str
    items: int = 0
    samples: int | None = None
    error: str | None = None
    problems: dict[str, list[str]] = field(default_factory=lambda: {
        "missing images": [], "unreadable images": [], "unreadable annotations": [], "size mismatches": [],
        "empty masks": []})

    @property
    def too_many_empty(self) -> bool:
        empty = len(self.problems["empty masks"])
        return empty > 1 and empty > EMPTY_MASK_LIMIT * self.items

    @property
    def fatal(self) -> bool:
        serious = any(v for k, v in self.problems.items() if k != "empty masks")
        return self.error is not None or self.items == 0 or serious or self.too_many_empty

    def lines(self) -> list[str]:
        if self.error:
            return [f"  {self.split}: FATAL {self.error}"]
        samples = f", {self.samples} samples" if self.samples is not None else ""
        out = [f"  {self.split}: {self.items} items{samples}"]
        for kind, examples in self.problems.items():
            if examples:
                level = "warning" if kind == "empty masks" and not self.too_many_empty else "FATAL"
                shown = "; ".join(examples[:SHOWN]) + (" ..." if len(examples) > SHOWN else "")
                share = (f" ({len(examples) / self.items:.0%} of {self.items} items, over the "
                         f"{EMPTY_MASK_LIMIT:.0%} limit: are the segmentations in a format this loader reads?)"
                         if kind == "empty masks" and self.too_many_empty else "")
                out.append(f"    {level}: {len(examples)} {kind}{share}: {shown}")
        return out


def build(name: str, root: str | Path, overrides: dict[str, Any] | None = None) -> FileDataModule:
    if name not in TARGETS:
        raise ConfigError(f"unknown dataset {name!r} for --check; choose from {', '.join(TARGETS)}")
    registered, fixed, _ = TARGETS[name]
    return DATAMODULES.get(registered).cls(root=str(root), **{**fixed, **(overrides or {})})


def check_split(dm: FileDataModule, split: str, quick: bool = False, progress: bool = True) -> SplitReport:
    from tqdm import tqdm

    report = SplitReport(split)
    try:
        ds = dm.raw_dataset(split, train=True)  # one item per ref / image: each image is looked at once or few times
        report.items = len(ds)
        if not isinstance(ds, LabelMapDataset):  # its eval index would read every label map a second time
            report.samples = len(dm.raw_dataset(split, train=False))
    except (DatasetFileError, PickleReadError):
        raise  # a file that cannot be read at all: nothing to report split by split (one line, exit 2)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        report.error = first_line(exc)
        return report
    shapes: dict[Path, tuple[int, int] | None] = {}
    quiet = None if progress else True  # None: tqdm shows the bar only on a terminal
    bar = tqdm(range(len(ds)), desc=f"checking {split}", unit="item", disable=quiet, file=sys.stderr)
    for item in bar:
        try:
            path = ds.image_path(item)
        except (ValueError, KeyError) as exc:
            report.problems["unreadable annotations"].append(str(exc))
            continue
        if path not in shapes:
            shapes[path] = None
            if not path.is_file():
                report.problems["missing images"].append(str(path))
            elif quick:
                shapes[path] = (-1, -1)
            else:
                try:
                    shapes[path] = read_image(path).shape[:2]
                except ImageReadError as exc:
                    report.problems["unreadable images"].append(str(exc))
        if shapes[path] is None:
            continue
        try:
            sample = ds.target(item, np.random.default_rng([0, item]))
        except (ImageReadError, ValueError, KeyError, TypeError) as exc:
            report.problems["unreadable annotations"].append(f"{path.name}: {first_line(exc)}")
            continue
        allowed = ds.empty_allowed(item) if hasattr(ds, "empty_allowed") else ds.allow_empty_masks  # per-item rule
        if sample.get("skip") or (not sample["mask"].any() and not allowed):
            report.problems["empty masks"].append(f"{sample.get('id') or path.name}")
        if not quick and sample["mask"].shape != shapes[path]:
            report.problems["size mismatches"].append(f"{path} is {shapes[path]}, its mask {sample['mask'].shape}")
    for kind, examples in (ds.problems() if hasattr(ds, "problems") else {}).items():  # dataset-specific findings
        report.problems.setdefault(kind, []).extend(examples)
    return report


def check_dataset(name: str, root: str | Path, splits: list[str] | None = None, quick: bool = False,
                  progress: bool = True, overrides: dict[str, Any] | None = None) -> list[SplitReport]:
    dm = build(name, root, overrides)
    splits = splits or TARGETS[name][2] or dm.available_splits()  # a dataset without fixed splits lists its own
    return [check_split(dm, split, quick, progress) for split in splits]


def format_report(name: str, root: str | Path, reports: list[SplitReport]) -> str:
    fatal = sum(r.fatal for r in reports)
    lines = [f"{name} at {root}:"] + [line for r in reports for line in r.lines()]
    lines.append(f"{'FAILED' if fatal else 'OK'}: {fatal} of {len(reports)} splits with fatal problems")
    return "\n".join(lines)
