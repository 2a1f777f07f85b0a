"""Structure checks of annotation files, run once when a file is loaded.

A file of the wrong shape (a list where an object belongs, an image without ``file_name``, a ref whose
``sentences`` is a string) fails here with one ``DatasetFileError`` naming the file and the first bad
entry, instead of a ``KeyError``/``TypeError`` deep inside a dataloader worker later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.common import DatasetFileError

ID = (int, str)  # COCO ids are numbers; some converted datasets use strings
JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null (or missing)"}
COCO_IMAGE = {"id": ID, "file_name": (str,), "height": (int,), "width": (int,)}
COCO_CATEGORY = {"id": ID, "name": (str,)}


def json_kind(value: Any) -> str:
    return JSON_NAMES.get(type(value), type(value).__name__)


def check_records(records: Any, source: Path, what: str, fields: dict[str, tuple[type, ...]]) -> list[dict]:
    """``records`` must be a list of objects, each holding ``fields`` with one of the given types."""
    if not isinstance(records, list):
        raise DatasetFileError(f"{source}: expected {what} as an array of objects, got {json_kind(records)}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetFileError(f"{source}: {what} #{index} is {json_kind(record)}, not an object")
        for key, types in fields.items():
            value = record.get(key)
            if not isinstance(value, types) or isinstance(value, bool):
                expected = " or ".join("a number" if t is int else JSON_NAMES.get(t, t.__name__) for t in types)
                raise DatasetFileError(f"{source}: {what} #{index} has {key!r} {json_kind(value)}, expected {expected}")
    return records


def check_coco(coco: Any, source: Path, annotation: dict[str, tuple[type, ...]], categories: bool = False) -> dict:
    """A COCO-format object: ``images`` (id, file_name, height, width), ``annotations`` with ``annotation``'s
    fields, and ``categories`` (id, name) when ``categories``."""
    keys = ("images", "annotations", "categories") if categories else ("images", "annotations")
    if not isinstance(coco, dict) or not all(k in coco for k in keys):
        raise DatasetFileError(f"{source}: not a COCO-format file (needs {', '.join(repr(k) for k in keys)})")
    check_records(coco["images"], source, "images", COCO_IMAGE)
    check_records(coco["annotations"], source, "annotations", annotation)
    if categories:
        check_records(coco["categories"], source, "categories", COCO_CATEGORY)
    return coco


def check_refs(refs: Any, source: Path, ann_id: tuple[type, ...] = ID) -> list[dict]:
    """refer-toolkit refs: ``ref_id``, ``image_id``, ``ann_id`` and ``sentences`` (objects with ``sent`` or ``raw``)."""
    check_records(refs, source, "refs", {"ref_id": ID, "image_id": ID, "ann_id": ann_id, "sentences": (list,)})
    for index, ref in enumerate(refs):
        for sentence in ref["sentences"]:
            if not isinstance(sentence, dict) or not isinstance(sentence.get("sent", sentence.get("raw")), str):
                raise DatasetFileError(f"{source}: refs #{index} has a sentence that is not an object with a 'sent' string")
    return refs
