"""Sections (a)-(c) in one report: what the design choices cost or save on CPU (docs/benchmarks.md).

    OMP_NUM_THREADS=2 python -m benchmarks.run       # BEiT-3-Base + SAM vit_b, minimal repetitions (< 10 min on 2 cores)
    python -m benchmarks.run --tiny                   # tiny models: a smoke run
    python -m benchmarks.run --full                   # one-per-prompt loops really run N times, 3 timed training steps
    python -m benchmarks.run --only prompts,attention # some sections; each section's options work here too

(a) ``train_step_cache``, (b) ``prompt_batching``, (c) ``attention_sdpa``; (d) memory: every configuration
runs in its own subprocess and reports its peak RSS. Timings are wall-clock medians; no thresholds.
"""
from __future__ import annotations

import sys

from benchmarks import attention_sdpa, common, prompt_batching, train_step_cache

SECTIONS = (train_step_cache, prompt_batching, attention_sdpa)


def main(argv=None) -> int:
    return common.main(SECTIONS, argv, prog="python -m benchmarks.run", description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
