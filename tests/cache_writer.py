"""A light ``build_cache`` writer for kill tests (numpy, torch and evf.cache only: no Lightning to import).

    python -m tests.cache_writer OUT SEED [PAUSE_AT MARKER]

embeds 4 random images (``image_id`` train-0 ... train-3, pixels from ``SEED``) with the tiny SAM-1 of
``tiny_sam()``; with ``PAUSE_AT`` it writes ``MARKER`` before that image and then waits forever (to be killed).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

IMAGES = 4


def tiny_sam():
    from evf.sam import Sam1Backend

    torch.manual_seed(0)
    return Sam1Backend(variant="tiny")


def samples(seed: int, pause_at: int = -1, marker: str = ""):
    rng = np.random.default_rng(seed)
    for k in range(IMAGES):
        if k == pause_at:
            Path(marker).write_text("paused")
            while True:
                time.sleep(1)
        yield {"image_id": f"train-{k}", "image": rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)}


class ImagesOf:
    """Stands in for a datamodule when a cache is validated: ``cache_images`` gives the same images again."""

    def __init__(self, seed: int):
        self.seed = seed

    def cache_images(self, split: str):
        return list(samples(self.seed))


def write(out: str, seed: int, pause_at: int = -1, marker: str = ""):
    from evf.cache import build_cache

    return build_cache(tiny_sam(), {"train": samples(seed, pause_at, marker)}, out, batch_size=1, shard_size=1,
                       progress=False)


if __name__ == "__main__":
    out, seed, *pause = sys.argv[1:]
    write(out, int(seed), int(pause[0]) if pause else -1, pause[1] if pause else "")
