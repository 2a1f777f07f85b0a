"""Training step without vs with the frozen SAM-embedding cache (section (a) of ``evf bench``).

    OMP_NUM_THREADS=2 python benchmarks/train_step_cache.py               # BEiT-3-Base + SAM vit_b, batch 1
    OMP_NUM_THREADS=2 python benchmarks/train_step_cache.py --batch-size 4 --steps 3

Runs each mode in its own subprocess and reports its peak RSS. ``benchmarks/cache_speed.py`` is the
DataLoader-level variant (synthetic datamodule, interleaved modes, one process).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "train", *sys.argv[1:]]))
