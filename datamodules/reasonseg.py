"""ReasonSeg (LISA's reasoning-segmentation benchmark; EVF-SAM paper Tab.10) in its released layout.

Layout (``root`` is the ``ReasonSeg`` folder)::

    root/{train,val,test}/<name>.jpg   root/{train,val,test}/<name>.json

Each JSON is a LabelMe-style record: ``text`` (the instructions, a list of strings), ``is_sentence``
(``true``: a long, sentence-style query; ``false``: a short phrase) and ``shapes``, polygons with a ``label``
and ``points`` (``[[x, y], ...]``). The ground truth is rasterised as the reference loader does: ``flag``
shapes are skipped, each polygon is filled and outlined (1 px), coordinates truncated to integers, and the
polygons are painted from the largest area to the smallest, so a smaller region drawn over a larger one wins.
Labels containing ``ignore`` paint ignore pixels, any other label target pixels. Target pixels form the mask;
evaluation samples also carry the ignore pixels as ``ignore_mask``, which the metrics leave out of both the
intersection and the union. Training masks are the target pixels alone (ignore pixels count as background).

Evaluation follows the reference protocol: one sample per image, prompted with the first instruction
(``sentences="all"``: one sample per instruction). Training draws one instruction per image with the seeded
stream. ``queries`` keeps ``"all"`` images, only the ``"short"`` ones (``is_sentence`` false) or the ``"long"``
ones, for the per-query-type scores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import DatasetError, DatasetFileError, FileDataModule, SampleDataset, require_dir
from datamodules.schema import json_kind
from evf.config_errors import ConfigError
from evf.errors import first_line
from evf.io import exif_orientation

TINY = {"root": "fixture", "batch_size": 2}
QUERIES = ("all", "short", "long")
SENTENCES = ("first", "all")
TARGET, IGNORE = 1, 255  # label-map values, as the reference marks them


def read_record(path: Path) -> dict[str, Any]:
    """One annotation JSON, checked: ``{"texts": [str], "long": bool, "shapes": [(label, points)]}``.

    A few released files are not UTF-8 (cp1252, as the reference's fallback reads them)."""
    raw = path.read_bytes()
    try:
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            data = json.loads(raw.decode("cp1252"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetFileError(f"{path}: not valid JSON ({first_line(exc, 200)})") from None
    if not isinstance(data, dict):
        raise DatasetFileError(f"{path}: expected a JSON object, got {json_kind(data)}")
    texts = [data["text"]] if isinstance(data.get("text"), str) else data.get("text")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DatasetFileError(f"{path}: 'text' must be a non-empty list of instructions, got {json_kind(data.get('text'))}")
    if not isinstance(data.get("is_sentence"), bool):
        raise DatasetFileError(f"{path}: 'is_sentence' must be true or false, got {json_kind(data.get('is_sentence'))}")
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise DatasetFileError(f"{path}: 'shapes' must be an array, got {json_kind(shapes)}")
    parsed = []
    for index, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        points = shape.get("points") if isinstance(shape, dict) else None
        if not isinstance(label, str):
            raise DatasetFileError(f"{path}: shapes #{index} has no 'label' string")
        if label.lower() == "flag":  # deprecated marks, skipped by the reference
            continue
        try:
            points = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            points = None
        if points is None or points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise DatasetFileError(f"{path}: shapes #{index} ('{label}') needs 'points' as a list of [x, y] pairs")
        parsed.append((label, points))
    return {"texts": [t.strip() for t in texts], "long": data["is_sentence"], "shapes": parsed}


def polygon_pixels(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool ``[H, W]``: the polygon filled plus its 1-px outline, vertices truncated to integers (cv2, as the
    reference rasterises)."""
    import cv2

    canvas = np.zeros((height, width), dtype=np.uint8)
    vertices = [points.astype(np.int32)]  # float -> int32 truncates toward zero
    cv2.fillPoly(canvas, vertices, 1)
    cv2.polylines(canvas, vertices, True, 1, 1)
    return canvas.astype(bool)


def label_map(shapes: list[tuple[str, np.ndarray]], height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W]``: 0 background, ``TARGET``, ``IGNORE``; larger regions first, smaller ones on top."""
    regions = [polygon_pixels(points, height, width) for _, points in shapes]
    areas = np.array([r.sum() for r in regions], dtype=np.int64)
    labels = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas, kind="stable")[::-1]:  # ties: the later shape first, as the reference orders them
        labels[regions[index]] = IGNORE if "ignore" in shapes[index][0].lower() else TARGET
    return labels


class ReasonSegDataset(SampleDataset):
    """Eval: ``items`` = ``(record index, instruction index)``; train: record indices."""

    def __init__(self, folder: Path, queries: str = "all", sentences: str = "first", train: bool = False,
                 seed: int = 0):
        super().__init__(train, seed)
        files = sorted(require_dir(folder, "ReasonSeg split folder").glob("*.json"))
        if not files:
            raise DatasetError(f"{folder}: no annotation JSONs (expected <name>.json next to <name>.jpg)")
        records = [(path, read_record(path)) for path in files]
        keep = {"all": (True, False), "short": (False,), "long": (True,)}[queries]
        self.records = [(path, rec) for path, rec in records if rec["long"] in keep]
        if not self.records:
            raise DatasetError(f"{folder}: no {queries} queries among its {len(records)} annotations")
        if train:
            self.items = list(range(len(self.records)))
        else:
            self.items = [(r, s) for r, (_, rec) in enumerate(self.records)
                          for s in range(len(rec["texts"]) if sentences == "all" else 1)]

    def record_index(self, item: int) -> int:
        return self.items[item] if self.train else self.items[item][0]

    def image_path(self, item: int) -> Path:
        return self.records[self.record_index(item)][0].with_suffix(".jpg")

    def image_size(self, path: Path) -> tuple[int, int]:
        """(height, width) of the upright image (EXIF orientation applied, as ``read_image`` returns it)."""
        from PIL import Image

        with Image.open(path) as image:  # the header only: load() decodes the pixels once, read_image checks them
            width, height = image.size
            return (width, height) if exif_orientation(image) in (5, 6, 7, 8) else (height, width)

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        index = self.record_index(item)
        path, record = self.records[index]
        height, width = self.image_size(path.with_suffix(".jpg"))
        labels = label_map(record["shapes"], height, width)
        sentence = int(rng.integers(len(record["texts"]))) if self.train else self.items[item][1]
        sample = {"mask": labels == TARGET, "text": record["texts"][sentence], "id": f"{path.stem}:{sentence}",
                  "image_id": path.stem, "is_sentence": record["long"]}
        if not self.train:
            sample["ignore_mask"] = labels == IGNORE
        return sample


@DATAMODULES.register("reasonseg", tiny=TINY)
class ReasonSegDataModule(FileDataModule):
    """ReasonSeg ``train`` (239 images), ``val`` (200) and ``test`` (779) splits.

    Args:
        queries: ``"all"``, ``"short"`` (``is_sentence`` false) or ``"long"`` images.
        sentences: evaluation samples per image: ``"first"`` instruction (the reference protocol) or ``"all"``.
    """

    fixture = "reasonseg"

    def __init__(self, root: str, queries: str = "all", sentences: str = "first", seed: int = 0, augment: Any = None,
                 batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 embedding_cache: str | None = None):
        if queries not in QUERIES:
            raise ConfigError(f"queries must be one of {', '.join(QUERIES)}, got {queries!r}")
        if sentences not in SENTENCES:
            raise ConfigError(f"sentences must be one of {', '.join(SENTENCES)}, got {sentences!r}")
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        self.queries, self.sentences = queries, sentences

    def build(self, split: str, train: bool) -> ReasonSegDataset:
        return ReasonSegDataset(self.root / split, self.queries, self.sentences, train, self.seed)
