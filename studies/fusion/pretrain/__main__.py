"""``python -m studies.fusion.pretrain --out weights/mini``: see ``cli.py``."""
import sys

from studies.fusion.pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
