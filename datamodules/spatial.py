"""Synthetic *spatial* referring benchmark: expressions that resolve only by relating text to the image.

Builds on the shapes of ``datamodules.synthetic`` (same colours, shapes, rasteriser and textures), but
every scene draws its objects from only two shapes and two colours, so most objects share colour and
shape with a distractor and the words alone rarely identify the target. Each sample is a pure
function of (seed, split, index); splits differ by their seed stream. Grammar (docs/synthetic.md):

    attribute := "the" COLOR SHAPE                         (the only one of that colour+shape)
    relation  := "the" COLOR SHAPE "on the" (left|right)   (left/right-most of its colour+shape group)
               | "the" (top|bottom) COLOR SHAPE
               | "the" (largest|smallest) COLOR SHAPE
               | "the" SHAPE "on the" (left|right) | "the" (top|bottom|largest|smallest) SHAPE
    next_to   := "the" SHAPE "next to the" COLOR SHAPE     (nearest SHAPE to a unique anchor object)
    semantic  := "[semantic]" SHAPE | "[semantic]" COLOR "shape"   (mask = every visible pixel of the class)

Relations need a clear margin (half a radius in position, 1.3x in size, 1.3x in distance), and the
group has at least two members, so the text names a *set* and the image picks the member.
Families are drawn with ``FAMILY_WEIGHTS`` among those the scene supports.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import DATAMODULES, RefSegDataModule
from datamodules.synthetic import COLORS, SHAPES, SPLIT_IDS, Shape, place_and_paint, texture
from evf.config_errors import ConfigError

FAMILY_WEIGHTS = {"relation": 0.6, "next_to": 0.2, "semantic": 0.12, "attribute": 0.08}
SEMANTIC_PREFIX = "[semantic]"
OBJECTS = (4, 6)  # objects per scene (min, max)
RADIUS = (0.09, 0.18)  # object radius range, as a fraction of the image height
STREAM = 17  # keeps this benchmark's random stream apart from the quickstart dataset's


def family_of(text: str) -> str:
    """The grammar family of an expression (for per-family scores of saved predictions)."""
    if text.startswith(SEMANTIC_PREFIX):
        return "semantic"
    if " next to " in text:
        return "next_to"
    words = set(text.split())
    return "relation" if words & {"left", "right", "top", "bottom", "largest", "smallest"} else "attribute"


def extreme(target: Shape, group: list[Shape], key, margin: float) -> bool:
    """True if ``key(target)`` beats every other member of ``group`` by more than ``margin``."""
    return all(key(target) + margin < key(o) for o in group if o is not target)


def relations(s: Shape, group: list[Shape], noun: str) -> list[str]:
    """Left/right/top/bottom/largest/smallest expressions singling ``s`` out of ``group`` (len >= 2)."""
    if len(group) < 2:
        return []
    m = 0.5 * s.r
    tests = {
        f"the {noun} on the left": extreme(s, group, lambda o: o.cx, m),
        f"the {noun} on the right": extreme(s, group, lambda o: -o.cx, m),
        f"the top {noun}": extreme(s, group, lambda o: o.cy, m),
        f"the bottom {noun}": extreme(s, group, lambda o: -o.cy, m),
        f"the largest {noun}": all(s.r > 1.3 * o.r for o in group if o is not s),
        f"the smallest {noun}": all(1.3 * s.r < o.r for o in group if o is not s),
    }
    return [text for text, ok in tests.items() if ok]


def distance(p: Shape, q: Shape) -> float:
    return float(np.hypot(p.cx - q.cx, p.cy - q.cy))


def next_to(shapes: list[Shape], t: int) -> list[str]:
    """``the SHAPE next to the COLOR SHAPE``: the target is clearly the nearest of its shape to a unique anchor."""
    s, out = shapes[t], []
    for a in shapes:
        if a is s or sum(o.kind == a.kind and o.color == a.color for o in shapes) != 1:
            continue
        rivals = [o for o in shapes if o.kind == s.kind and o is not s and o is not a]
        if rivals and all(1.3 * distance(s, a) < distance(o, a) for o in rivals):
            out.append(f"the {s.kind} next to the {a.color} {a.kind}")
    return out


def candidates(shapes: list[Shape], masks: list[np.ndarray]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every (expression, mask) the scene supports, grouped by family; targets must be visible."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {f: [] for f in FAMILY_WEIGHTS}
    for t, s in enumerate(shapes):
        if masks[t].sum() < 4:
            continue
        same = [o for o in shapes if o.kind == s.kind and o.color == s.color]
        if len(same) == 1:
            out["attribute"].append((f"the {s.color} {s.kind}", masks[t]))
        texts = relations(s, same, f"{s.color} {s.kind}") + relations(s, [o for o in shapes if o.kind == s.kind], s.kind)
        out["relation"] += [(text, masks[t]) for text in texts]
        out["next_to"] += [(text, masks[t]) for text in next_to(shapes, t)]
    for name, members in [(k, [i for i, s in enumerate(shapes) if s.kind == k]) for k in SHAPES] + \
                         [(f"{c} shape", [i for i, s in enumerate(shapes) if s.color == c]) for c in COLORS]:
        if members:
            out["semantic"].append((f"{SEMANTIC_PREFIX} {name}", np.logical_or.reduce([masks[i] for i in members])))
    return out


def make_spatial_scene(rng: np.random.Generator, size: int, objects: tuple[int, int] = OBJECTS,
                       radius: tuple[float, float] = RADIUS) -> tuple[np.ndarray, list[Shape], list[np.ndarray]]:
    """Image ``uint8 [H, W, 3]``, the shapes, and each shape's visible mask (later shapes occlude earlier)."""
    h, w = size, int(rng.integers(size * 3 // 4, size * 5 // 4 + 1))
    image = texture(rng, h, w)
    kinds = rng.choice(SHAPES, size=2, replace=False)
    colors = rng.choice(list(COLORS), size=2, replace=False)
    count = int(rng.integers(objects[0], objects[1] + 1))
    shapes, masks = place_and_paint(rng, image, size, count, kinds, colors, radius)
    return np.clip(image, 0, 255).astype(np.uint8), shapes, masks


def generate_spatial_scene(seed: int, split: str, index: int, size: int = 96, objects: tuple[int, int] = OBJECTS,
                           radius: tuple[float, float] = RADIUS, family_weights: dict[str, float] | None = None,
                           ) -> tuple[dict, list[Shape], list[np.ndarray]]:
    """The sample plus the scene it was drawn from (shapes and their visible masks), for analysis.

    ``family_weights`` (default ``FAMILY_WEIGHTS``) may leave families out; a scene that supports
    none of the weighted families is redrawn."""
    family_weights = family_weights or FAMILY_WEIGHTS
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, STREAM])
    while True:
        image, shapes, masks = make_spatial_scene(rng, size, objects, radius)
        options = {f: c for f, c in candidates(shapes, masks).items() if c and family_weights.get(f, 0) > 0}
        if not options:
            continue
        families = sorted(options)
        weights = np.array([family_weights[f] for f in families])
        family = families[int(rng.choice(len(families), p=weights / weights.sum()))]
        text, mask = options[family][int(rng.integers(len(options[family])))]
        sample = {"image": image, "mask": mask.copy(), "text": text, "id": f"{split}-{index}",
                  "image_id": f"{split}-{index}", "family": family}
        return sample, shapes, masks


def generate_spatial_sample(seed: int, split: str, index: int, size: int = 96, objects: tuple[int, int] = OBJECTS,
                            radius: tuple[float, float] = RADIUS, family_weights: dict[str, float] | None = None) -> dict:
    return generate_spatial_scene(seed, split, index, size, objects, radius, family_weights)[0]


def words_only_mask(text: str, shapes: list[Shape], masks: list[np.ndarray]) -> np.ndarray:
    """The best a model that ignores the relation can do: every object matching the expression's head words.

    ``the top red circle`` -> all red circles; ``the circle next to the green square`` -> all circles
    but the anchor; attribute and semantic expressions are exact. Used for the text-only bound in studies/fusion/README.md.
    """
    words = text.split()
    head = words[: words.index("next")] if "next" in words else words
    kind = next(w for w in head if w in SHAPES) if any(w in SHAPES for w in head) else None
    color = next((w for w in head if w in COLORS), None)
    anchor = None
    if "next" in words:
        anchor_color, anchor_kind = words[-2], words[-1]
        anchor = next(i for i, s in enumerate(shapes) if s.color == anchor_color and s.kind == anchor_kind)
    picked = [i for i, s in enumerate(shapes) if i != anchor and (kind is None or s.kind == kind)
              and (color is None or s.color == color)]
    return np.logical_or.reduce([masks[i] for i in picked]) if picked else np.zeros_like(masks[0])


class SpatialRefDataset(Dataset):
    def __init__(self, split: str, length: int, seed: int = 0, image_size: int = 96, objects: tuple[int, int] = OBJECTS,
                 radius: tuple[float, float] = RADIUS, family_weights: dict[str, float] | None = None):
        if split not in SPLIT_IDS:
            raise ConfigError(f"unknown split {split!r}; choose from {sorted(SPLIT_IDS)}")
        self.split, self.length, self.seed, self.image_size = split, length, seed, image_size
        self.objects, self.radius, self.family_weights = tuple(objects), tuple(radius), family_weights

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return generate_spatial_sample(self.seed, self.split, index, self.image_size, self.objects, self.radius,
                                       self.family_weights)


@DATAMODULES.register("spatial", tiny={"train_size": 8, "val_size": 3, "test_size": 5, "batch_size": 2})
class SpatialRefDataModule(RefSegDataModule):
    """The synthetic spatial benchmark (fusion study). Split sizes are sample counts; ``seed`` is the data seed,
    fixed across training seeds so every run sees the same splits."""

    def __init__(self, train_size: int = 20000, val_size: int = 200, test_size: int = 500, seed: int = 0,
                 image_size: int = 96, objects: tuple[int, int] = OBJECTS, radius: tuple[float, float] = RADIUS,
                 family_weights: dict[str, float] | None = None, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0):
        super().__init__(batch_size, eval_batch_size, num_workers)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed
        self.image_size = image_size
        self.objects, self.radius, self.family_weights = tuple(objects), tuple(radius), family_weights

    def raw_dataset(self, split: str) -> SpatialRefDataset:
        return SpatialRefDataset(split, self.sizes[split], self.seed, self.image_size, self.objects, self.radius,
                                 self.family_weights)


def family_scores(prediction_files) -> dict[str, dict[str, float]]:
    """Per-family cIoU / gIoU / count from ``--save_predictions`` JSONL files (one ``{sentence, I, U, IoU}`` per line)."""
    import json
    from pathlib import Path

    sums: dict[str, list[float]] = {}
    for path in prediction_files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            acc = sums.setdefault(family_of(row["sentence"]), [0.0, 0.0, 0.0, 0])
            acc[0] += row["I"]
            acc[1] += row["U"]
            acc[2] += row["IoU"]
            acc[3] += 1
    return {f: {"cIoU": i / u if u else 1.0, "gIoU": s / n, "samples": n} for f, (i, u, s, n) in sorted(sums.items())}
