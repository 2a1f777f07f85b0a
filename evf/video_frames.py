"""Video frames read one at a time: a folder of images or a video file (PyAV, ``pip install evf[video]``).

    frames = open_frames("clip.mp4")      # or a folder of images, or a list of uint8 [H, W, 3] arrays
    len(frames), frames.size              # frame count, (height, width)
    frames[i]                             # uint8 [H, W, 3]; decoded on demand, only the last few are kept

A video file is decoded sequentially: reading forward is cheap, reading back before the kept frames reopens
the file and decodes from the start (the tracker reads forward, so this happens only when tracking backward
from a prompt frame > 0; then ``BACKWARD_BLOCK`` frames stay decoded, so each re-decode serves that many frames:
for a long video with a late prompt frame, a frame folder is faster). Nothing holds more than ``keep`` decoded
frames, whatever the video's length.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from evf.errors import UserError, first_line
from evf.io import exif_orientation, read_image

BACKWARD_BLOCK = 16  # frames a video file keeps decoded once read backward (each re-decode then serves 16 reads)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class VideoReadError(UserError, ValueError):
    """Unreadable video or frame folder, no frames, or frames of different sizes (one line, naming the file)."""


class Frames:
    """Random access to ``uint8 [H, W, 3]`` frames, each read on demand; the last ``keep`` stay in memory."""

    fps: float | None = None  # the video file's frame rate (None for frame folders and arrays)

    def __init__(self, source: str, count: int, size: tuple[int, int], keep: int = 4):
        self.source, self.count, self.size, self.keep = source, count, size, keep
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < self.count:
            raise IndexError(f"frame {index} out of range for {self.count} frames of {self.source}")
        if index not in self.cache:
            self.remember(index, self.read(index))
        self.cache.move_to_end(index)
        return self.cache[index]

    def remember(self, index: int, frame: np.ndarray) -> None:
        if frame.shape[:2] != self.size:
            h, w = frame.shape[:2]
            raise VideoReadError(f"{self.source}: frame {index} is {w}x{h}, frame 0 is {self.size[1]}x{self.size[0]} "
                                 "(all frames must have one size)")
        self.cache[index] = frame
        while len(self.cache) > self.keep:
            self.cache.popitem(last=False)

    def read(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self.cache.clear()


class ArrayFrames(Frames):
    """Frames already in memory (a list of arrays or a ``[T, H, W, 3]`` array)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        if len(arrays) == 0:
            raise VideoReadError("no frames given")
        self.arrays = arrays
        super().__init__("frames", len(arrays), tuple(np.asarray(arrays[0]).shape[:2]), keep=1)

    def read(self, index: int) -> np.ndarray:
        frame = np.asarray(self.arrays[index])
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoReadError(f"frame {index} must be uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
        return frame


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as ``read_image`` returns it (EXIF rotation applied), from its header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (w, h) if exif_orientation(im) in (5, 6, 7, 8) else (h, w)
    except (OSError, SyntaxError, ValueError) as exc:
        raise VideoReadError(f"cannot read frame {path}: {first_line(exc)}") from None


class FolderFrames(Frames):
    """The images of a folder, in file-name order; every header is checked for one common size up front."""

    def __init__(self, folder: Path):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise VideoReadError(f"frame folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.files = files
        size = header_size(files[0])
        for path in files[1:]:
            other = header_size(path)
            if other != size:
                raise VideoReadError(f"{path} is {other[1]}x{other[0]}, {files[0].name} is {size[1]}x{size[0]} "
                                     "(all frames must have one size)")
        super().__init__(str(folder), len(files), size)

    def read(self, index: int) -> np.ndarray:
        return read_image(self.files[index])


def import_av():
    try:
        import av
    except ImportError:
        raise UserError("reading or writing video files needs PyAV: pip install 'evf[video]' (or pip install av)") from None
    return av


class VideoFileFrames(Frames):
    """A video file's first video stream, decoded forward with PyAV; the frame count comes from demuxing (no decode)."""

    def __init__(self, path: Path):
        self.av = import_av()
        self.path = path
        try:
            with self.av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoReadError(f"video {path} has no frames (no video stream)")
                stream = container.streams.video[0]
                count = sum(1 for packet in container.demux(stream) if packet.size)
                size = (stream.codec_context.height, stream.codec_context.width)
                self.fps = float(stream.average_rate) if stream.average_rate else None
        except self.av.FFmpegError as exc:
            raise VideoReadError(f"cannot read video {path}: {exc.strerror or type(exc).__name__}") from None
        if count == 0:
            raise VideoReadError(f"video {path} has no frames")
        self.container, self.decoder, self.next_index = None, None, 0
        super().__init__(str(path), count, size)

    def read(self, index: int) -> np.ndarray:
        if self.decoder is None or index < self.next_index:
            if self.decoder is not None:  # reading backward: keep a block of frames per re-decode, not 4
                self.keep = max(self.keep, BACKWARD_BLOCK)
            self.close()
            self.container = self.av.open(str(self.path))
            self.decoder, self.next_index = self.container.decode(video=0), 0
        try:
            while self.next_index <= index:
                frame = next(self.decoder).to_ndarray(format="rgb24")
                self.next_index += 1
                if self.next_index <= index:  # frames passed on the way stay readable (the overlay pass needs them)
                    self.remember(self.next_index - 1, frame)
        except StopIteration:
            raise VideoReadError(f"video {self.path} ended at frame {self.next_index}, its stream holds {self.count}") from None
        except self.av.FFmpegError as exc:
            raise VideoReadError(f"cannot decode frame {index} of {self.path}: {exc.strerror or type(exc).__name__}") from None
        return frame

    def close(self) -> None:
        super().close()
        if self.container is not None:
            self.container.close()
        self.container, self.decoder = None, None


def open_frames(source: str | os.PathLike | Sequence[np.ndarray] | Frames) -> Frames:
    """A ``Frames`` for a frame folder, a video file, a sequence of ``uint8 [H, W, 3]`` arrays, or a ``Frames``."""
    if isinstance(source, Frames):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return ArrayFrames(source)
    path = Path(source)
    if path.is_dir():
        return FolderFrames(path)
    if not path.is_file():
        raise VideoReadError(f"video {path} does not exist")
    return VideoFileFrames(path)
