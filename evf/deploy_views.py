"""The image views of ``evf.transforms`` / ``evf/sam/*`` in numpy + PIL, for ``evf.deploy`` (no torch).

Each is rebuilt from the plain dict an export writes (``evf.export.view_spec``), with the constants read from
the model's own view objects. What is exact and what is not (tests/test_export.py checks all of them):

- PIL resizes and the normalisations: bit-identical (same library, same float32 operations);
- the uint8 bilinear stretch of SAM-2 / EfficientSAM: bit-identical to torch's CPU uint8 kernel (two separable
  passes with int16 fixed-point weights, each rounded to uint8), reproduced here;
- float bicubic / bilinear resizes (BEiT-3's view, EfficientSAM's old view): computed in float64 and rounded
  to float32, so within one float32 rounding of torch's float32 kernel.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from evf.io import to_rgb_uint8


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """``[3, H, W]`` float32, as ``evf.transforms.normalize`` (float32 subtract, then divide)."""
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return (x.astype(np.float32) - mean) / std


def cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """torch's bicubic convolution coefficients for fractional offsets ``t``: ``[n, 4]``."""
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def interp_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """``[out, in]`` float64 weights of torch's ``interpolate(align_corners=False, antialias=False)`` on one axis."""
    scale = in_size / out_size
    src = (np.arange(out_size) + 0.5) * scale - 0.5
    mat = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if mode == "bicubic":
        base = np.floor(src)
        weights = cubic_weights(src - base)
        for k in range(4):  # out-of-range taps read the border pixel
            np.add.at(mat, (rows, np.clip(base.astype(int) - 1 + k, 0, in_size - 1)), weights[:, k])
    elif mode == "bilinear":
        src = np.maximum(src, 0.0)
        lo = np.minimum(np.floor(src).astype(int), in_size - 1)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = src - lo
        np.add.at(mat, (rows, lo), 1.0 - frac)
        np.add.at(mat, (rows, hi), frac)
    else:
        raise ValueError(f"unsupported interpolation mode {mode!r}")
    return mat


def resize_float(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``[C, H, W]`` float32 -> ``[C, h, w]`` float32 (computed in float64)."""
    rows = interp_matrix(x.shape[1], size[0], mode)
    cols = interp_matrix(x.shape[2], size[1], mode)
    return (rows @ x.astype(np.float64) @ cols.T).astype(np.float32)  # [o, h] @ [c, h, w] @ [w, p] -> [c, o, p]


def uint8_bilinear_pass(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One axis of torch's uint8 bilinear kernel (antialias=False): triangle weights of support 1, normalised,
    scaled to int16 at the largest precision that fits, accumulated in integers, rounded, clipped to uint8."""
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - 0.5), 0)  # int() truncates toward zero, as the C++ cast; center - 1 + 0.5
        hi = min(int(center + 1.5), in_size)
        taps = np.maximum(0.0, 1.0 - np.abs(np.arange(lo, hi) - center + 0.5))
        weights[i, lo:hi] = taps / taps.sum() if taps.sum() else 0.0
    precision = 0
    while precision < 22 and int(0.5 + weights.max() * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * (1 << precision)), np.trunc(0.5 + weights * (1 << precision)))
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1), dtype=np.float64)
    # one 2-D float64 BLAS product, exact: integer sums of 255 x int16 weights stay far below 2**53
    acc = (moved.reshape(-1, in_size) @ fixed.T).reshape(*moved.shape[:-1], out_size).astype(np.int64)
    acc += 1 << (precision - 1)
    return np.moveaxis(np.clip(acc >> precision, 0, 255).astype(np.uint8), -1, axis)


def longest_side(h: int, w: int, target: int) -> tuple[int, int]:
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def pil_resize_normalized(image: np.ndarray, size: tuple[int, int], spec: dict) -> np.ndarray:
    resized = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return normalize(resized.transpose(2, 0, 1), spec["mean"], spec["std"])


def apply_view(spec: dict, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """One view of ``uint8 [H, W, 3]`` -> ``(float32 [3, S, S], input_size (h, w))`` as the torch view computes it."""
    image = to_rgb_uint8(image)  # the conversion the torch views use (gray, alpha, 16-bit)
    kind, size = spec["kind"], int(spec["size"])
    if kind == "stretch":
        x = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return normalize(resize_float(x, (size, size), spec["mode"]), spec["mean"], spec["std"]), (size, size)
    if kind == "longest_side_pad":
        h, w = longest_side(*image.shape[:2], size)
        x = pil_resize_normalized(image, (h, w), spec)
        return np.pad(x, ((0, 0), (0, size - h), (0, size - w))), (h, w)
    if kind == "longest_side_stretch":
        h, w = longest_side(*image.shape[:2], size)
        return resize_float(pil_resize_normalized(image, (h, w), spec), (size, size), "bilinear"), (h, w)
    if kind == "square_stretch":
        if spec["resize"] == "pil":
            return pil_resize_normalized(image, (size, size), spec), (size, size)
        x = uint8_bilinear_pass(uint8_bilinear_pass(image, size, axis=1), size, axis=0)
        return normalize(x.transpose(2, 0, 1), spec["mean"], spec["std"]), (size, size)
    raise ValueError(f"unknown image view {kind!r} in deploy.json")
