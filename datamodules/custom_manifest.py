"""The manifest of a dataset of your own (``CustomRefDataModule``): JSON Lines, one target per line.

Each line is an object (docs/custom-data.md has the full reference)::

    {"image": "images/a.jpg", "expressions": ["the red car", "car on the left"], "mask": "masks/a_car.png"}
    {"image": "images/a.jpg", "expression": "the tree", "polygons": [[x0, y0, x1, y1, x2, y2, ...]], "split": "val"}
    {"image": "images/b.jpg", "expression": "the dog", "rle": {"size": [h, w], "counts": "..."}}
    {"image": "images/b.jpg", "expression": "the bus", "bbox": [x, y, w, h]}          (-> SAM mask: evf prepare custom)
    {"image": "images/b.jpg", "expression": "a unicorn", "empty": true}              (no such object: all-zero mask)
    {"annotation_id": 17, "expressions": ["the cat"]}                                 (COCO: instances.json beside it)
    {"image_id": 4, "expression": "a giraffe", "empty": true}                         (COCO image, no target)

Paths are relative to the manifest's folder and may not leave it. ``split`` defaults to ``train``;
``id`` (unique) defaults to ``L<line number>``. Everything is checked when the manifest is read: a bad line
is one ``DatasetFileError`` naming the file and the line number.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.common import DatasetFileError, load_json
from datamodules.schema import ID, check_coco, json_kind
from evf.errors import first_line

TARGETS = ("mask", "polygons", "rle", "bbox", "annotation_id", "empty")
KEYS = {"id", "image", "image_id", "expression", "expressions", "split", *TARGETS}
NUMBER = (int, float)


@dataclass(frozen=True)
class Entry:
    """One manifest line: ``kind`` is the target key it uses, ``value`` that key's (checked) value."""

    line: int
    id: str
    image: Path  # the image file (resolved under the root)
    image_id: str  # the image's key for caches and hybrid ids: its path relative to the root, or the COCO id
    expressions: tuple[str, ...]
    split: str
    kind: str
    value: Any
    size: tuple[int, int] | None = None  # (height, width) where the COCO file states it


def inside(root: Path, rel: Any, where: str, key: str) -> Path:
    """``root / rel``, refused when ``rel`` is not a relative path staying inside ``root``."""
    if not isinstance(rel, str) or not rel.strip():
        raise DatasetFileError(f"{where}: {key!r} must be a non-empty path string, got {json_kind(rel)}")
    normal = os.path.normpath(rel)
    if os.path.isabs(rel) or Path(normal).parts[0] == "..":
        raise DatasetFileError(f"{where}: {key!r} path {rel!r} leaves the dataset folder {root} (give it relative to it)")
    return root / normal


def is_number_list(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, list) and len(value) >= minimum and all(
        isinstance(v, NUMBER) and not isinstance(v, bool) for v in value)


def check_target(kind: str, value: Any, root: Path, where: str) -> Any:
    """The target's value, normalised (a path resolved, one flat polygon wrapped in a list)."""
    if kind == "mask":
        return inside(root, value, where, "mask")
    if kind == "polygons":
        polygons = [value] if is_number_list(value, 1) else value
        if not isinstance(polygons, list) or not polygons or not all(
                is_number_list(p, 6) and len(p) % 2 == 0 for p in polygons):
            raise DatasetFileError(f"{where}: 'polygons' must be a list of polygons [x0, y0, x1, y1, x2, y2, ...] "
                                   "(at least 3 points each)")
        return polygons
    if kind == "rle":
        if not (isinstance(value, dict) and is_number_list(value.get("size"), 2) and len(value["size"]) == 2
                and (isinstance(value.get("counts"), str) or is_number_list(value.get("counts")))):
            raise DatasetFileError(f"{where}: 'rle' must be {{\"size\": [height, width], \"counts\": str or list}}")
        return value
    if kind == "bbox":
        if not (is_number_list(value, 4) and len(value) == 4 and value[2] > 0 and value[3] > 0):
            raise DatasetFileError(f"{where}: 'bbox' must be [x, y, width, height] with width, height > 0, got {value!r:.80}")
        return [float(v) for v in value]
    if kind == "annotation_id":
        ids = value if isinstance(value, list) else [value]
        if not ids or not all(isinstance(i, ID) and not isinstance(i, bool) for i in ids):
            raise DatasetFileError(f"{where}: 'annotation_id' must be a COCO annotation id or a list of them")
        return ids
    if value is not True:  # empty
        raise DatasetFileError(f"{where}: 'empty' must be true (an expression naming nothing), got {value!r:.40}")
    return True


def expressions_of(record: dict, where: str) -> tuple[str, ...]:
    if ("expression" in record) == ("expressions" in record):
        raise DatasetFileError(f"{where}: needs 'expression' (a string) or 'expressions' (a list of strings), exactly one")
    texts = [record["expression"]] if "expression" in record else record["expressions"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DatasetFileError(f"{where}: expressions must be non-empty strings, got {texts!r:.80}")
    return tuple(t.strip() for t in texts)


class Manifest:
    """A parsed manifest: ``entries`` in file order; ``coco`` (images, annotations by id) when a line uses it."""

    def __init__(self, path: str | os.PathLike, instances: str = "instances.json", image_dir: str = ""):
        self.path = Path(path)
        self.root = self.path.parent
        self.instances_path = self.root / instances
        self.image_dir = image_dir
        self.coco: dict | None = None
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetFileError(f"{self.path}: not UTF-8 text ({first_line(exc, 120)})") from None
        self.entries = [self.entry(n, line) for n, line in enumerate(lines, 1) if line.strip()]
        if not self.entries:
            raise DatasetFileError(f"{self.path}: no lines")

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def entry(self, n: int, text: str) -> Entry:
        where = self.where(n)
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DatasetFileError(f"{where}: not valid JSON ({first_line(exc, 120)})") from None
        if not isinstance(record, dict):
            raise DatasetFileError(f"{where}: expected a JSON object, got {json_kind(record)}")
        unknown = sorted(set(record) - KEYS)
        if unknown:
            raise DatasetFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
        targets = [k for k in TARGETS if k in record]
        if len(targets) != 1:
            raise DatasetFileError(f"{where}: needs exactly one target of {', '.join(TARGETS)}; "
                                   f"found {', '.join(targets) or 'none'}")
        kind = targets[0]
        split, line_id = record.get("split", "train"), record.get("id", f"L{n}")
        if not isinstance(split, str) or not split:
            raise DatasetFileError(f"{where}: 'split' must be a non-empty string, got {json_kind(split)}")
        if not isinstance(line_id, ID) or isinstance(line_id, bool):
            raise DatasetFileError(f"{where}: 'id' must be a string or a number, got {json_kind(line_id)}")
        value = check_target(kind, record[kind], self.root, where)
        image, image_id, size = self.image_of(record, kind, value, where)
        return Entry(n, str(line_id), image, image_id, expressions_of(record, where), split, kind, value, size)

    def image_of(self, record: dict, kind: str, value: Any, where: str) -> tuple[Path, str, tuple[int, int] | None]:
        """The line's image: its ``image`` path, or the COCO image of ``image_id`` / of its annotations."""
        coco_image = record.get("image_id")
        if kind == "annotation_id":
            anns = self.instances()[1]
            missing = [a for a in value if a not in anns]
            if missing:
                raise DatasetFileError(f"{where}: annotation {missing[0]!r} is not in {self.instances_path}")
            owners = {anns[a]["image_id"] for a in value}
            if len(owners) > 1 or (coco_image is not None and owners != {coco_image}):
                raise DatasetFileError(f"{where}: the annotations belong to images {sorted(map(str, owners))}, "
                                       "one image expected" + (f" ({coco_image!r})" if coco_image is not None else ""))
            coco_image = owners.pop()
        if "image" in record:
            if coco_image is not None:
                raise DatasetFileError(f"{where}: give 'image' (a path) or a COCO 'image_id'/'annotation_id', not both")
            path = inside(self.root, record["image"], where, "image")
            return path, path.relative_to(self.root).as_posix(), None
        if coco_image is None:
            raise DatasetFileError(f"{where}: needs 'image' (a path relative to {self.root}), or a COCO 'image_id'")
        images = self.instances()[0]
        if coco_image not in images:
            raise DatasetFileError(f"{where}: image_id {coco_image!r} is not in {self.instances_path}")
        info = images[coco_image]
        rel = inside(self.root, os.path.join(self.image_dir, info["file_name"]), f"{self.instances_path}: image {coco_image}",
                     "file_name")
        return rel, str(coco_image), (info["height"], info["width"])

    def instances(self) -> tuple[dict, dict]:
        """(images by id, annotations by id) of the COCO file, read once when a line first refers to it."""
        if self.coco is None:
            coco = check_coco(load_json(self.instances_path, "COCO instances file (named by annotation_id/image_id lines)"),
                              self.instances_path, {"id": ID, "image_id": ID})
            self.coco = {"images": {i["id"]: i for i in coco["images"]},
                         "annotations": {a["id"]: a for a in coco["annotations"]}}
        return self.coco["images"], self.coco["annotations"]

    def splits(self) -> list[str]:
        return sorted({e.split for e in self.entries})

    def duplicate_ids(self) -> dict[str, list[int]]:
        """``id -> line numbers`` for every id used on more than one line."""
        lines: dict[str, list[int]] = {}
        for e in self.entries:
            lines.setdefault(e.id, []).append(e.line)
        return {i: ls for i, ls in lines.items() if len(ls) > 1}
