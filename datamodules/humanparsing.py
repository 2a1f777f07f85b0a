"""Human parsing (LIP, CIHP) as semantic-level data: ``"[semantic] {part}"`` -> every pixel of that label.

Left and right: both datasets label body parts from the *person's* side (``Left-arm`` is the
person's own left arm). Referring expressions (RefCOCO) speak from the *viewer's* side, and the
paper aligns part data with them, so by default ``left`` and ``right`` are swapped in the prompt:
label ``Left-arm`` becomes ``"[semantic] right arm"``. ``side="person"`` keeps the dataset's
words; ``rename`` overrides single names after the swap.

Layouts (``layout``; ``image_dir``/``label_dir``/``id_file`` override them, ``{split}`` and
``{folder}`` (Training/Validation) are filled in)::

    lip:  TrainVal_images/{split}_images/*.jpg   TrainVal_parsing_annotations/{split}_segmentations/*.png
          TrainVal_images/{split}_id.txt (optional list of ids)
    cihp: {folder}/Images/*.jpg   {folder}/Category_ids/*.png   {folder}/{split}_id.txt
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.base import DATAMODULES
from datamodules.common import DatasetFileError, FileDataModule, require_dir, require_file
from datamodules.semantic import LabelMapDataset, paired_files
from evf.config_errors import ConfigError

LIP_CLASSES = ("background", "hat", "hair", "glove", "sunglasses", "upper clothes", "dress", "coat", "socks", "pants",
               "jumpsuits", "scarf", "skirt", "face", "left arm", "right arm", "left leg", "right leg", "left shoe",
               "right shoe")
CIHP_CLASSES = LIP_CLASSES[:10] + ("torso skin",) + LIP_CLASSES[11:]
LAYOUTS = {
    "lip": {"images": "TrainVal_images/{split}_images", "labels": "TrainVal_parsing_annotations/{split}_segmentations",
            "ids": "TrainVal_images/{split}_id.txt", "classes": LIP_CLASSES},
    "cihp": {"images": "{folder}/Images", "labels": "{folder}/Category_ids", "ids": "{folder}/{split}_id.txt",
             "classes": CIHP_CLASSES},
}
FOLDERS = {"train": "Training", "val": "Validation", "test": "Testing"}
SIDE_WORDS = {"left": "right", "right": "left"}


def viewer_side(name: str) -> str:
    """``"left arm"`` -> ``"right arm"``: the person's left is on the viewer's right."""
    return " ".join(SIDE_WORDS.get(word, word) for word in name.split())


def part_names(classes: tuple[str, ...] | list[str], side: str = "viewer", rename: dict[str, str] | None = None,
               include_background: bool = False) -> dict[int, str]:
    """Label value -> prompt words after the side convention and ``rename`` (keys are the dataset's names)."""
    if side not in ("viewer", "person"):
        raise ConfigError(f"side must be 'viewer' or 'person', got {side!r}")
    names = {}
    for value, name in enumerate(classes):
        if value == 0 and not include_background:
            continue
        words = viewer_side(name) if side == "viewer" else name
        names[value] = (rename or {}).get(name, words)
    return names


@DATAMODULES.register("humanparsing", tiny={"root": "fixture", "batch_size": 2})
class HumanParsingDataModule(FileDataModule):
    """LIP / CIHP. ``class_file``: optional text file, one class name per line, line number = label value."""

    fixture = "humanparsing"

    def __init__(self, root: str, layout: str = "lip", side: str = "viewer", rename: dict[str, str] | None = None,
                 include_background: bool = False, class_file: str | None = None, image_dir: str | None = None,
                 label_dir: str | None = None, id_file: str | None = None, min_pixels: int = 1, seed: int = 0,
                 augment: Any = None, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "val",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown human-parsing layout {layout!r}; choose from {sorted(LAYOUTS)}")
        preset = LAYOUTS[layout]
        self.templates = {"images": image_dir or preset["images"], "labels": label_dir or preset["labels"],
                          "ids": id_file or preset["ids"]}
        classes = preset["classes"]
        if class_file:
            path = require_file(self.root / class_file, "class list")
            classes = [line.strip().lower().replace("-", " ") for line in path.read_text().splitlines() if line.strip()]
        self.names = part_names(classes, side, rename, include_background)
        self.layout, self.side, self.min_pixels = layout, side, min_pixels

    def path(self, key: str, split: str) -> Path:
        return self.root / self.templates[key].format(split=split, folder=FOLDERS.get(split, split))

    def build(self, split: str, train: bool) -> LabelMapDataset:
        images, labels = self.path("images", split), self.path("labels", split)
        ids_file = self.path("ids", split)
        if ids_file.is_file():  # the official id list decides membership and order
            require_dir(images, "image folder")
            ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
            if not ids:
                raise DatasetFileError(f"{ids_file}: empty id list")
            pairs = [(i, images / f"{i}.jpg", labels / f"{i}.png") for i in ids]
        else:
            pairs = paired_files(images, labels)
        return LabelMapDataset(pairs, self.names, train, self.seed, self.min_pixels)
