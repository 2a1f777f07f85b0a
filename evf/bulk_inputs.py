"""Which images a bulk ``evf predict`` run segments, with which prompts, and where each one's outputs go.

Inputs: image files, folders (searched recursively for image files), glob patterns (``"photos/**/*.jpg"``)
and JSONL manifests, one image per line::

    {"image": "photos/zebra.jpg", "prompts": ["the zebra on the left", "[semantic] sky"]}

(the path relative to the manifest's folder, or absolute; ``"prompts"`` may be left out when
default prompts are given). Every problem is found here, before any model loads or file is written,
and reported as one line naming the file (``BulkInputError``).
"""
from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from evf.errors import UserError, first_line
from evf.io import PLUGIN_ERRORS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
GLOB_CHARS = "*?["


class BulkInputError(UserError, ValueError):
    """A bad image list, folder, glob or manifest line; the message names the file (and line)."""


@dataclass(frozen=True)
class BulkItem:
    """One image of a bulk run: its file, its prompts, and its output folder relative to ``--out``."""

    image: Path
    prompts: tuple[str, ...]
    out_name: Path


def is_glob(spec: str) -> bool:
    return any(c in spec for c in GLOB_CHARS)


def glob_base(pattern: str) -> str:
    """The folder a glob pattern searches from: its leading components without wildcards."""
    parts = Path(pattern).parts
    static = list(parts[: next(i for i, p in enumerate(parts) if is_glob(p))])
    return os.path.abspath(os.path.join(*static)) if static else os.path.abspath(".")


def is_hidden_or_excluded(path: Path, top: Path, exclude: Path | None) -> bool:
    rel = path.relative_to(top).parts
    return any(p.startswith(".") for p in rel) or (exclude is not None and path.is_relative_to(exclude))


def images_in_folder(folder: Path, exclude: Path | None) -> list[str]:
    """Image files under ``folder`` (recursive), skipping hidden files/folders and the output folder."""
    top = Path(os.path.abspath(folder))
    return sorted(str(p) for p in top.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not is_hidden_or_excluded(p, top, exclude))


def resolve_specs(specs: Sequence[str], exclude: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """``(absolute image paths, base folders)`` of files, folders and globs; the output folder is never an input."""
    exclude_dir = Path(os.path.abspath(exclude)) if exclude is not None else None
    images, bases = [], []
    for spec in specs:
        if is_glob(spec) and not os.path.exists(spec):  # an existing "img[1].png" is a file, not a pattern
            found = sorted(os.path.abspath(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            found = [p for p in found if exclude_dir is None or not Path(p).is_relative_to(exclude_dir)]
            if not found:
                raise BulkInputError(f"no image files match {spec!r}")
            bases.append(glob_base(spec))
        elif os.path.isdir(spec):
            found = images_in_folder(Path(spec), exclude_dir)
            if not found:
                raise BulkInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {spec}")
            bases.append(os.path.abspath(spec))
        elif os.path.isfile(spec):
            found = [os.path.abspath(spec)]
            bases.append(os.path.dirname(found[0]))
        else:
            raise BulkInputError(f"image not found: {spec}")
        images += [p for p in found if p not in images]
    return images, bases


def read_text_lines(path: Path, what: str, error: type[Exception] = BulkInputError) -> list[str]:
    """The lines of a UTF-8 text file (a BOM is dropped); ``error`` names ``what`` and the file otherwise."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start})") from None


def read_manifest(path: str | os.PathLike, default_prompts: Sequence[str] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """``(absolute image path, prompts)`` for each non-blank line of a JSONL manifest."""
    path = Path(path)
    lines = read_text_lines(path, "manifest")
    rows, seen = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"manifest {path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BulkInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        prompts = entry.get("prompts", default_prompts or None) if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]
                or not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts)):
            raise BulkInputError(f'{where}: expected {{"image": "<path>", "prompts": ["<text>", ...]}}')
        for i, text in enumerate(prompts):
            if not text.strip():
                raise BulkInputError(f"{where}: prompt #{i + 1} is empty")
        image = os.path.abspath(path.parent / entry["image"])
        if image in seen:
            raise BulkInputError(f"{where}: image {entry['image']} is already on line {seen[image]}; give all its prompts on one line")
        if not os.path.isfile(image):
            raise BulkInputError(f"image not found: {image} ({where})")
        seen[image] = number
        rows.append((image, tuple(p.strip() for p in prompts)))
    if not rows:
        raise BulkInputError(f"manifest {path} lists no images")
    return rows


def output_names(images: Sequence[str], bases: Sequence[str]) -> list[Path]:
    """Each image's path relative to the deepest folder above every input: distinct images, distinct folders.

    A file and a folder cannot share a path, so ``<out>/<relative image path>/`` never collides, and the
    mask names inside (``00_<prompt>.png``) cannot be another image's folder.
    """
    root = os.path.commonpath([*bases, *(os.path.dirname(p) for p in images)])
    return [Path(os.path.relpath(p, root)) for p in images]


def check_image(path: str) -> None:
    """Cheap check before the run (header only): missing, empty or not an image -> one line naming the file."""
    if not os.path.isfile(path):
        raise BulkInputError(f"image not found: {path}")
    if os.path.getsize(path) == 0:
        raise BulkInputError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BulkInputError(f"cannot read image {path}: {first_line(exc)}") from None
    except PLUGIN_ERRORS as exc:
        raise BulkInputError(f"cannot read image {path}: {type(exc).__name__}: {first_line(exc)}") from None


def collect_items(specs: Sequence[str] = (), manifest: str | None = None, prompts: Sequence[str] = (),
                  exclude: str | os.PathLike | None = None, threads: int = 4) -> list[BulkItem]:
    """Every image of a run with its prompts and output folder name; all images' headers are checked."""
    if manifest is not None:
        rows = read_manifest(manifest, prompts)
        bases = [os.path.dirname(os.path.abspath(manifest))]
    else:
        if not prompts:
            raise BulkInputError("give at least one --prompt or a --prompt-file")
        images, bases = resolve_specs(specs, exclude)
        rows = [(p, tuple(prompts)) for p in images]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(check_image, [image for image, _ in rows]))  # raises the first bad image, in input order
    names = output_names([image for image, _ in rows], bases)
    return [BulkItem(Path(image), p, name) for (image, p), name in zip(rows, names)]
