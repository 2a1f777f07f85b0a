"""Embedded synthetic referring dataset: coloured shapes on textured backgrounds, generated from a seed.

Every sample is a pure function of (seed, split, index), so nothing is downloaded or stored.
Grammar (the target is always unique under its expression, so the image is needed to find it):

    expr := "the" COLOR SHAPE                      (colour+shape unique in the scene)
          | "the" COLOR "shape"                    (colour unique)
          | "the" SHAPE "on the" (left|right)      (target is the left/right-most of its shape)
          | "the" (top|bottom) SHAPE               (target is the top/bottom-most of its shape)
          | "the" (largest|smallest) SHAPE         (target is the largest/smallest of its shape)

Generalized (gRefCOCO-style) expressions, off by default (``absent_fraction`` / ``multi_fraction``; docs/gres.md):

    absent := "the" COLOR SHAPE | "the" COLOR "shape"    (no such object in the scene: empty mask)
            | "the" COLOR (star|ring|cross)             (a kind never drawn; ABSENT_UNDRAWN_SHARE of absent ones)
    multi  := "all" SHAPE "s" | "every" SHAPE | "all" COLOR "shapes" | "all" COLOR SHAPE "s"
                                                         (>= 2 visible objects match: the union of their masks)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import DATAMODULES, RefSegDataModule
from evf.config_errors import ConfigError

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230), "yellow": (235, 220, 40),
          "purple": (150, 60, 200)}
SHAPES = ("square", "circle", "triangle", "diamond")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
UNDRAWN_KINDS = ("star", "ring", "cross")  # words the toy tokenizer knows, shapes the generator never draws
ABSENT_UNDRAWN_SHARE = 0.2  # of absent expressions; the rest name a drawable object missing from this scene
GRES_STREAM = 29  # the family draw has its own random stream: the scene stream of a sample is unchanged


@dataclass
class Shape:
    kind: str
    color: str
    cy: float
    cx: float
    r: float


def rasterize(shape: Shape, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dy, dx = (y - shape.cy) / shape.r, (x - shape.cx) / shape.r
    if shape.kind == "square":
        return (np.abs(dy) <= 0.8) & (np.abs(dx) <= 0.8)
    if shape.kind == "circle":
        return dy**2 + dx**2 <= 1.0
    if shape.kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= 1.0
    return (dy <= 0.7) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) * 0.6)  # triangle, apex up


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(60, 160, size=3)
    y, x = np.mgrid[0:h, 0:w]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.4)
    stripes = 18 * np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y))[..., None]
    noise = rng.normal(0, 10, size=(h, w, 3))
    return np.clip(base + stripes + noise, 0, 255)


def expressions(shapes: list[Shape], t: int) -> list[str]:
    """Every grammar expression that singles out ``shapes[t]``."""
    s = shapes[t]
    same_kind = [o for o in shapes if o.kind == s.kind]
    out = []
    if sum(o.kind == s.kind and o.color == s.color for o in shapes) == 1:
        out.append(f"the {s.color} {s.kind}")
    if sum(o.color == s.color for o in shapes) == 1:
        out.append(f"the {s.color} shape")
    if len(same_kind) >= 2:
        others = [o for o in same_kind if o is not s]
        margin = 0.5 * s.r
        if all(s.cx + margin < o.cx for o in others):
            out.append(f"the {s.kind} on the left")
        if all(s.cx - margin > o.cx for o in others):
            out.append(f"the {s.kind} on the right")
        if all(s.cy + margin < o.cy for o in others):
            out.append(f"the top {s.kind}")
        if all(s.cy - margin > o.cy for o in others):
            out.append(f"the bottom {s.kind}")
        if all(s.r > 1.3 * o.r for o in others):
            out.append(f"the largest {s.kind}")
        if all(s.r * 1.3 < o.r for o in others):
            out.append(f"the smallest {s.kind}")
    return out


def place_and_paint(rng: np.random.Generator, image: np.ndarray, size: int, count: int, kinds, colors,
                    radius: tuple[float, float]) -> tuple[list[Shape], list[np.ndarray]]:
    """Place up to ``count`` non-overlapping shapes, paint them onto ``image`` and return their visible masks.

    Later shapes occlude earlier ones, so each mask keeps only its visible pixels.
    """
    h, w = image.shape[:2]
    shapes: list[Shape] = []
    for _ in range(count):
        for _attempt in range(30):
            r = rng.uniform(*radius) * size
            cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            if all(np.hypot(cy - o.cy, cx - o.cx) > 0.9 * (r + o.r) for o in shapes):
                shapes.append(Shape(str(rng.choice(kinds)), str(rng.choice(colors)), cy, cx, r))
                break
    masks = [rasterize(s, h, w) for s in shapes]
    for s, m in zip(shapes, masks):
        image[m] = np.asarray(COLORS[s.color]) + rng.normal(0, 6, size=(int(m.sum()), 3))
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            masks[i] &= ~masks[j]
    return shapes, masks


def make_scene(rng: np.random.Generator, size: int, max_objects: int = 4) -> tuple[np.ndarray, list[Shape], list[np.ndarray]]:
    h, w = size, int(rng.integers(size * 3 // 4, size * 5 // 4 + 1))
    image = texture(rng, h, w)
    kinds = rng.choice(SHAPES, size=2, replace=False)  # few kinds, so relations are needed often
    count = int(rng.integers(2, max_objects + 1))
    shapes, masks = place_and_paint(rng, image, size, count, kinds, list(COLORS), (0.08, 0.2))
    return np.clip(image, 0, 255).astype(np.uint8), shapes, masks


def absent_expressions(shapes: list[Shape]) -> tuple[list[str], list[str]]:
    """(expressions naming a drawable object that is not in the scene, expressions naming an undrawn kind)."""
    combos = {(s.color, s.kind) for s in shapes}
    colors = {s.color for s in shapes}
    missing = [f"the {c} {k}" for c in COLORS for k in SHAPES if (c, k) not in combos]
    missing += [f"the {c} shape" for c in COLORS if c not in colors]
    return missing, [f"the {c} {k}" for c in COLORS for k in UNDRAWN_KINDS]


def multi_expressions(shapes: list[Shape], masks: list[np.ndarray]) -> list[tuple[str, list[int]]]:
    """Expressions matching at least two visible objects, each with the indices of every object it names."""
    visible = [i for i, m in enumerate(masks) if m.any()]
    groups: list[tuple[list[str], list[int]]] = []
    for k in SHAPES:
        groups.append(([f"all {k}s", f"every {k}"], [i for i in visible if shapes[i].kind == k]))
        for c in COLORS:
            groups.append(([f"all {c} {k}s"], [i for i in visible if shapes[i].kind == k and shapes[i].color == c]))
    for c in COLORS:
        groups.append(([f"all {c} shapes"], [i for i in visible if shapes[i].color == c]))
    return [(text, members) for texts, members in groups if len(members) >= 2 for text in texts]


def gres_family(seed: int, split: str, index: int, absent_fraction: float, multi_fraction: float) -> str:
    """``single`` / ``absent`` / ``multi`` for one sample; no draw at all when both fractions are 0."""
    if absent_fraction <= 0 and multi_fraction <= 0:
        return "single"
    u = np.random.default_rng([seed, SPLIT_IDS[split], index, GRES_STREAM]).random()
    return "absent" if u < absent_fraction else "multi" if u < absent_fraction + multi_fraction else "single"


def generate_sample(seed: int, split: str, index: int, size: int = 96, absent_fraction: float = 0.0,
                    multi_fraction: float = 0.0) -> dict:
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    family = gres_family(seed, split, index, absent_fraction, multi_fraction)
    ids = {"id": f"{split}-{index}", "image_id": f"{split}-{index}"}
    if family != "single":
        return generate_gres_sample(rng, size, family) | ids
    while True:
        image, shapes, masks = make_scene(rng, size)
        order = rng.permutation(len(shapes))
        for t in order:
            options = expressions(shapes, int(t))
            if options and masks[t].any():
                text = str(rng.choice(options))
                return {"image": image, "mask": masks[t], "text": text, "id": f"{split}-{index}",
                        "image_id": f"{split}-{index}"}


def generate_gres_sample(rng: np.random.Generator, size: int, family: str) -> dict:
    """An ``absent`` (empty mask) or ``multi`` (union of every matching object) sample on a fresh scene."""
    while True:
        image, shapes, masks = make_scene(rng, size)
        if family == "absent":
            missing, undrawn = absent_expressions(shapes)
            text = str(rng.choice(undrawn if rng.random() < ABSENT_UNDRAWN_SHARE else missing))
            return {"image": image, "mask": np.zeros(image.shape[:2], dtype=bool), "text": text, "family": family}
        options = multi_expressions(shapes, masks)
        if options:
            text, members = options[int(rng.integers(len(options)))]
            return {"image": image, "mask": np.logical_or.reduce([masks[i] for i in members]), "text": text,
                    "family": family}


def check_fractions(absent_fraction: float, multi_fraction: float) -> None:
    if not (0 <= absent_fraction <= 1 and 0 <= multi_fraction <= 1 and absent_fraction + multi_fraction <= 1):
        raise ConfigError(f"absent_fraction {absent_fraction} and multi_fraction {multi_fraction} must be in [0, 1] "
                          "with a sum of at most 1")


class SyntheticRefDataset(Dataset):
    def __init__(self, split: str, length: int, seed: int = 0, image_size: int = 96, absent_fraction: float = 0.0,
                 multi_fraction: float = 0.0):
        if split not in SPLIT_IDS:
            raise ConfigError(f"unknown split {split!r}; choose from {sorted(SPLIT_IDS)}")
        check_fractions(absent_fraction, multi_fraction)
        self.split, self.length, self.seed, self.image_size = split, length, seed, image_size
        self.absent_fraction, self.multi_fraction = absent_fraction, multi_fraction

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return generate_sample(self.seed, self.split, index, self.image_size, self.absent_fraction, self.multi_fraction)


@DATAMODULES.register("synthetic", tiny={"train_size": 8, "val_size": 3, "test_size": 5, "batch_size": 2})
class SyntheticRefDataModule(RefSegDataModule):
    """The embedded default: no files needed. Split sizes are sample counts per split. ``absent_fraction`` /
    ``multi_fraction``: shares of no-target and multi-target expressions in every split (gRES; default 0)."""

    def __init__(self, train_size: int = 4000, val_size: int = 100, test_size: int = 200, seed: int = 0,
                 image_size: int = 96, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 embedding_cache: str | None = None, absent_fraction: float = 0.0, multi_fraction: float = 0.0):
        super().__init__(batch_size, eval_batch_size, num_workers, embedding_cache=embedding_cache)
        check_fractions(absent_fraction, multi_fraction)
        self.fractions = (absent_fraction, multi_fraction)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed
        self.image_size = image_size

    def raw_dataset(self, split: str) -> SyntheticRefDataset:
        if split not in self.sizes:
            raise ConfigError(f"unknown split {split!r} of {type(self).__name__}; choose from {sorted(self.sizes)}")
        return SyntheticRefDataset(split, self.sizes[split], self.seed, self.image_size, *self.fractions)
