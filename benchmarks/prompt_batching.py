"""N prompts on one image: one batched ``EVFSAM.predict`` vs one call per prompt (section (b) of ``evf bench``).

    OMP_NUM_THREADS=2 python benchmarks/prompt_batching.py                 # BEiT-3-Base + SAM vit_b, random weights
    OMP_NUM_THREADS=2 python benchmarks/prompt_batching.py --full --prompts 1,4,8,16

Each configuration runs in its own subprocess (peak RSS per configuration). Options as ``evf bench --help``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "prompts", *sys.argv[1:]]))
