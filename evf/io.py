"""The one image loader and the one way to write output files (atomically)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from evf.transforms import to_rgb_uint8


class ImageReadError(ValueError):
    """An image file is missing, unreadable, truncated or empty; the message names the file."""


def open_array(path: str | os.PathLike, kind: str, keep_palette: bool) -> tuple[np.ndarray, str]:
    """Decode an image file into an array and its PIL mode; errors name the file and what it was for."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{kind} not found: {path}")
    if path.stat().st_size == 0:
        raise ImageReadError(f"cannot read {kind} {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and not keep_palette:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return np.array(im), im.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {kind} {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``; gray, gray+alpha, RGBA, palette and 16-bit files are converted."""
    array, mode = open_array(path, "image", keep_palette=False)
    if array.dtype in (np.int32, np.uint32) or (array.dtype == np.uint16 and array.ndim == 2 and mode.startswith("I")):
        # PIL opens 16-bit grayscale PNGs as mode "I"/"I;16": scale to 8 bits.
        array = (np.clip(array, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    try:
        return to_rgb_uint8(array)
    except ValueError as exc:
        raise ImageReadError(f"unusable image {path}: {exc}") from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An index/label PNG as an integer array ``[H, W]`` (palette indices are kept, not converted)."""
    return open_array(path, "mask", keep_palette=True)[0]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; it replaces ``path`` only if the block finishes.

    A crash or kill mid-write leaves the old file (or nothing) behind, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces the folder ``path`` only if the block finishes.

    A folder cannot be renamed over a non-empty one, so an existing ``path`` is removed just before the
    rename: a crash in that instant leaves no folder (never a half-written one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
