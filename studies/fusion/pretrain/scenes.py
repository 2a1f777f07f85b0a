"""Synthetic scenes and captions for the miniature pre-training (never the spatial benchmark's expressions)."""
from __future__ import annotations

import numpy as np
import torch

from datamodules.spatial import RADIUS
from datamodules.synthetic import COLORS, SHAPES, place_and_paint, texture

ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
SCENE_SIZE = 96
WARMUP_STEPS = 50  # linear warm-up of every pre-training run, then linear decay to 0


def grid_cell(shape, height: int, width: int) -> tuple[int, int]:
    """(row, column) of ``shape``'s centre in a 3x3 grid over the image."""
    return min(2, int(3 * shape.cy / height)), min(2, int(3 * shape.cx / width))


def scene_caption(shapes, masks, height: int, width: int, rng: np.random.Generator, objects: int | None = None) -> str:
    """Visible objects as ``COLOR SHAPE ROW COLUMN`` (3x3 grid of its centre), ``objects`` of them (all
    if ``None``) in random order: a fixed order (e.g. reading order) would let the words predict each
    other without the image."""
    phrases = []
    for s, m in zip(shapes, masks):
        if m.sum() >= 4:
            row, col = grid_cell(s, height, width)
            phrases.append(f"{s.color} {s.kind} {ROWS[row]} {COLS[col]}")
    order = rng.permutation(len(phrases))[: objects or len(phrases)]
    return " and ".join(phrases[i] for i in order)


def caption_scene(rng: np.random.Generator, size: int = SCENE_SIZE) -> tuple[np.ndarray, list, list]:
    """A scene for captioning: 3-5 objects of any colour and shape, so a ``COLOR SHAPE`` phrase almost always
    names one object (the benchmark's scenes repeat two colours and two shapes on purpose, which would make
    most captions ambiguous about where each phrase is)."""
    h, w = size, int(rng.integers(size * 3 // 4, size * 5 // 4 + 1))
    image = texture(rng, h, w)
    shapes, masks = place_and_paint(rng, image, size, int(rng.integers(3, 6)), SHAPES, list(COLORS), RADIUS)
    return np.clip(image, 0, 255).astype(np.uint8), shapes, masks


def mask_tokens(rng: np.random.Generator, ids: torch.Tensor, padding: torch.Tensor, prob: float) -> torch.Tensor:
    """Positions to predict: ``prob`` of each caption's tokens between BOS and EOS, at least one."""
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(len(ids)):
        n = int((~padding[b]).sum())
        inner = np.arange(1, n - 1)
        k = max(1, round(prob * len(inner)))
        chosen[b, rng.choice(inner, size=k, replace=False)] = True
    return chosen


def caption_batch(rng: np.random.Generator, encoder, batch_size: int, objects: int | None = None,
                  negatives: bool = True) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Images in the encoder's view, tokenized captions, and which pairs match (with ``negatives``, about half
    the images get the previous scene's caption instead)."""
    images, captions = [], []
    for _ in range(batch_size):
        image, shapes, masks = caption_scene(rng)
        images.append(encoder.image_view(image))
        captions.append(scene_caption(shapes, masks, *image.shape[:2], rng, objects))
    matched = torch.from_numpy(rng.random(batch_size) < 0.5) if negatives else torch.ones(batch_size, dtype=torch.bool)
    shift = np.roll(np.arange(batch_size), 1)  # a negative pairs an image with the previous scene's caption
    captions = [c if m else captions[j] for c, m, j in zip(captions, matched.tolist(), shift)]
    return torch.stack(images), encoder.tokenizer(captions), matched


def grounding_batch(rng: np.random.Generator, encoder, batch_size: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Images, captions naming one object by colour and shape (the only one of its kind in the scene), and
    the 3x3 cell of that object's centre (``3 * row + column``)."""
    images, captions, cells = [], [], []
    while len(images) < batch_size:
        image, shapes, masks = caption_scene(rng)
        unique = [s for s, m in zip(shapes, masks)
                  if m.sum() >= 4 and sum(o.color == s.color and o.kind == s.kind for o in shapes) == 1]
        if not unique:
            continue
        s = unique[int(rng.integers(len(unique)))]
        row, col = grid_cell(s, *image.shape[:2])
        images.append(encoder.image_view(image))
        captions.append(f"{s.color} {s.kind}")
        cells.append(3 * row + col)
    return torch.stack(images), encoder.tokenizer(captions), torch.tensor(cells)


