"""Tiny partimagenet folder in its real COCO-format layout (see datamodules/testing/parts.py).

    python -m datamodules.testing.partimagenet OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

from datamodules.testing import cli
from datamodules.testing.parts import write_parts


def write(out: str | Path, seed: int = 0) -> dict:
    return write_parts(out, "partimagenet", seed)


if __name__ == "__main__":
    sys.exit(cli(write))
