"""The one image loader and the one way to write output files (atomically)."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from evf.errors import UserError, first_line

# Bump whenever read_image returns other pixels for some file: embedding caches record it and are refused
# when it differs. 2: EXIF orientation applied, CMYK/YCCK and 16-bit modes converted like cv2.imread.
IMAGE_LOADER_VERSION = 2


class ImageReadError(UserError, ValueError):
    """An image file is missing, unreadable, truncated, empty or unusable; the message names the file."""


# EXIF orientation (tag 0x0112) -> the transpose that shows the pixels upright, as every viewer and
# cv2.imread (the official demo's loader) do; 1 (or no tag) means the stored pixels are already upright.
EXIF_ORIENTATION_TAG = 0x0112
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Longest side / shortest side. Beyond this an image cannot be a photo of anything to segment, and a
# longest-side resize (SAM-1: 1024) would leave its short side at a pixel or none.
MAX_ASPECT_RATIO = 100
INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # decoded as arrays, not through PIL's convert
# What PIL's format plugins raise on damaged files besides the documented OSError / SyntaxError
PLUGIN_ERRORS = (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, struct.error, EOFError)


@contextlib.contextmanager
def opened(path: str | os.PathLike, kind: str) -> Iterator[Image.Image]:
    """A decoded PIL image; every decoding failure becomes one ``ImageReadError`` line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{kind} not found: {path}")
    if path.stat().st_size == 0:
        raise ImageReadError(f"cannot read {kind} {path}: the file is empty (0 bytes)")
    try:
        im = Image.open(path)
        try:
            im.load()
        except BaseException:
            im.close()
            raise
    except Image.DecompressionBombError as exc:  # PIL's size guard, raised before any pixel is decoded
        raise ImageReadError(f"cannot read {kind} {path}: {first_line(exc).rstrip('.')} "
                             "(the limit is 2 x PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {kind} {path}: {first_line(exc)}") from None
    except PLUGIN_ERRORS as exc:
        raise ImageReadError(f"cannot read {kind} {path}: {type(exc).__name__}: {first_line(exc)}") from None
    with im:  # outside the try: an error in the caller's block is the caller's, not a decoding failure
        yield im


def exif_orientation(im: Image.Image) -> int:
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is common in photos; the pixels are still good
        return 1
    return orientation if orientation in ORIENTATION_TRANSPOSE else 1


def upright(im: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied."""
    orientation = exif_orientation(im)
    return im.transpose(ORIENTATION_TRANSPOSE[orientation]) if orientation != 1 else im


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Gray, gray+alpha, RGBA and 16-bit images become ``uint8 [H, W, 3]``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an image [H, W, C] with H, W > 0, got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or uint16 image, got {image.dtype}")
    channels = image.shape[2]
    if channels in (1, 2):
        image = np.repeat(image[..., :1], 3, axis=2)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"expected 1-4 image channels, got {channels}")
    return np.ascontiguousarray(image)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> RGB ``uint8 [H, W, 3]`` (alpha dropped, not composited)."""
    if im.mode in INTEGER_MODES:
        # 16/32-bit grayscale (PNG opens as "I;16" or "I"): keep the high byte, as cv2.imread does;
        # PIL's own convert would clip at 255 instead. Float images are refused by to_rgb_uint8.
        array = np.array(im)
        if array.dtype.kind in "iu":
            array = (np.clip(array, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return to_rgb_uint8(array)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL asks for this route: the palette's transparency would be dropped with a warning
    # PIL's conversion handles CMYK (and YCCK JPEGs, which it decodes to CMYK, Adobe inversion included),
    # palettes, gray(+alpha), 1-bit, YCbCr, LAB and HSV; reading CMYK's four channels as RGBA would give a negative.
    return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``, upright as viewers show it (EXIF orientation applied, as cv2.imread does).

    Gray, gray+alpha, RGBA, palette, CMYK/YCCK and 16-bit files are converted.
    """
    with opened(path, "image") as im:
        w, h = im.size
        if min(w, h) > 0 and max(w, h) > MAX_ASPECT_RATIO * min(w, h):
            raise ImageReadError(f"unusable image {path}: {w}x{h} pixels (width x height) is more elongated than the limit of "
                                 f"{MAX_ASPECT_RATIO}:1 (longest side / shortest side)")
        try:
            return to_rgb_array(upright(im))
        except ValueError as exc:
            raise ImageReadError(f"unusable image {path}: {first_line(exc)} (mode {im.mode})") from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An index/label PNG as an integer array ``[H, W]`` (palette indices are kept, not converted).

    Stored pixel order, no EXIF orientation: label maps carry none, and their datasets pair them with images
    by pixel position.
    """
    with opened(path, "mask") as im:
        return np.array(im)


def make_temp_sibling(path: Path, folder: bool) -> Path:
    """A new, empty ``.<name>.<random>.tmp`` file or folder beside ``path``, with the mode a plain ``open()`` or
    ``mkdir`` gives: 0666 / 0777 less the umask (and a default ACL of the folder applies).

    Not ``tempfile.mkstemp``/``mkdtemp``: they create 0600 / 0700, which would carry over to the renamed output
    and hide it from the rest of a group sharing the folder (clusters usually run with umask 002 or 022).
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if folder:
                os.mkdir(tmp, 0o777)  # the kernel applies the umask, as for every mkdir
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:  # another writer's temporary of the same name: draw again
            continue
    raise FileExistsError(f"no free temporary name beside {path}")



GENERATED_ENV = "EVF_GENERATED"


def generated_dir() -> Path:
    """Where evf keeps files it generates once and reuses: the toy tokenizer and vocabulary of the tiny models and
    the datasets' tiny fixtures. ``$EVF_GENERATED``, else ``~/.local/share/evf/generated``. (The embedding cache
    of ``evf cache`` is another thing: it lives wherever ``--out`` puts it.)"""
    return Path(os.environ.get(GENERATED_ENV) or Path.home() / ".local" / "share" / "evf" / "generated")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; it replaces ``path`` only if the block finishes.

    A crash or kill mid-write leaves the old file (or nothing) behind, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_sibling(path, folder=False)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces the folder ``path`` only if the block finishes.

    A folder cannot be renamed over a non-empty one, so an existing ``path`` is first renamed aside
    (``.<name>.<random>.old``), the new folder renamed in, and the old one deleted. A crash between the
    two renames leaves no folder under ``path`` (the complete old one waits aside), never a mix of both;
    an error there puts the old folder back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_sibling(path, folder=True)
    try:
        yield tmp
        aside = None
        if path.is_dir():
            aside = path.with_name(f".{path.name}.{tmp.name.split('.')[-2]}.old")
            os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except BaseException:
            if aside is not None:
                os.rename(aside, path)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def leftover_siblings(path: str | os.PathLike) -> list[Path]:
    """Temporaries an interrupted ``atomic_dir``/``atomic_path`` of ``path`` left beside it.

    Only safe to delete while holding the folder's lock (another writer may be using its own)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.glob(f".{glob_escape(path.name)}.*") if p.name.endswith((".tmp", ".old"))]


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
