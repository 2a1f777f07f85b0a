"""What ``evf predict-video`` writes into ``--out``: per-frame masks, an overlay video and ``summary.json``.

    masks/00_the-red-square/00000.png     per-object form: one 0/255 PNG per object per frame (default)
    masks/00000.png                        indexed form: one palette PNG per frame, pixel = object number + 1
    overlay.mp4                            every frame with its masks blended in (H.264; odd sizes padded by 1 px)
    summary.json                           prompts, frames, per-object areas, speed and peak memory

Each file is written atomically (``evf.io``); the call's file list goes to the output manifest
(``evf.output_set``) like ``evf predict``'s. In the indexed form an overlapped pixel takes the first prompt's number.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from evf.io import atomic_path, save_png_atomic, write_text_atomic
from evf.video_frames import Frames, import_av
from evf.visualize import COLOURS, mask_names, overlay

MASK_FORMATS = ("per-object", "indexed")
OVERLAY_VIDEO = "overlay.mp4"
SUMMARY = "summary.json"
PALETTE = [0, 0, 0] + [c for i in range(255) for c in COLOURS[i % len(COLOURS)]]


def object_folders(prompts: Sequence[str]) -> list[str]:
    """``masks/00_<slug>``: named as ``evf predict`` names its mask files."""
    return [f"masks/{name.removesuffix('.png')}" for name in mask_names(prompts)]


def frame_name(index: int, count: int) -> str:
    return f"{index:0{max(5, len(str(count - 1)))}d}.png"


def frame_files(prompts: Sequence[str], index: int, count: int, mask_format: str) -> list[str]:
    """The mask file(s) of one frame, relative to ``--out``."""
    name = frame_name(index, count)
    if mask_format == "indexed":
        return [f"masks/{name}"]
    return [f"{folder}/{name}" for folder in object_folders(prompts)]


def planned_files(prompts: Sequence[str], count: int, mask_format: str, overlay_video: bool) -> list[str]:
    files = [f for t in range(count) for f in frame_files(prompts, t, count, mask_format)]
    return files + ([OVERLAY_VIDEO] if overlay_video else []) + [SUMMARY]


def write_masks(out: Path, prompts: Sequence[str], index: int, count: int, masks: np.ndarray, mask_format: str) -> None:
    """One frame's bool ``[N, H, W]`` masks."""
    paths = [out / f for f in frame_files(prompts, index, count, mask_format)]
    if mask_format == "per-object":
        for path, mask in zip(paths, masks):
            save_png_atomic(path, mask.astype(np.uint8) * 255)
        return
    labels = np.zeros(masks.shape[1:], np.uint8)
    for i in reversed(range(len(masks))):  # reversed: where masks overlap, the first prompt's number stays
        labels[masks[i]] = i + 1
    image = Image.fromarray(labels, mode="P")
    image.putpalette(PALETTE)
    with atomic_path(paths[0]) as tmp:
        image.save(tmp, format="PNG")


def read_masks(out: Path, prompts: Sequence[str], index: int, count: int, mask_format: str) -> np.ndarray:
    paths = [out / f for f in frame_files(prompts, index, count, mask_format)]
    if mask_format == "per-object":
        return np.stack([np.asarray(Image.open(p)) > 0 for p in paths])
    labels = np.asarray(Image.open(paths[0]))
    return np.stack([labels == i + 1 for i in range(len(prompts))])


def even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row/column where one is odd."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_overlay_video(out: Path, frames: Frames, prompts: Sequence[str], mask_format: str, fps: float) -> None:
    """Second pass over the frames (tracking may run backward from the prompt frame): masks read back from disk."""
    av = import_av()
    count = len(frames)
    with atomic_path(out / OVERLAY_VIDEO) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        h, w = even(frames[0]).shape[:2]
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(count):
            blended = even(overlay(frames[t], read_masks(out, prompts, t, count, mask_format)))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(blended, format="rgb24")))
        container.mux(stream.encode())


def write_summary(out: Path, summary: dict) -> None:
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
