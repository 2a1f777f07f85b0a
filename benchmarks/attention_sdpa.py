"""BEiT-3 attention: the model's SDPA vs an explicit softmax(QK^T/sqrt(d))V reference (section (c) of ``evf bench``).

    OMP_NUM_THREADS=2 python benchmarks/attention_sdpa.py                 # BEiT-3-Base sizes
    OMP_NUM_THREADS=2 python benchmarks/attention_sdpa.py --encoder large

Prints the time ratio and the max |difference| of the two outputs. The explicit reference lives only in
``evf/commands/bench.py`` (and its test), never in the model.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "attention", *sys.argv[1:]]))
