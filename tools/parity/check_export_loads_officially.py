"""Check that folders written by ``EVFSAM.save_pretrained`` load in the official code, key for key.

    python tools/parity/check_export_loads_officially.py [--official /work/official] [--python /work/venv-official/bin/python]

For EvfSam2Model (SAM-2 Hiera-T) and EvfEffiSamModel (EfficientSAM-Ti), both with BEiT-3-Base (the smallest
official configurations), a random-weight model of ours is exported in fp32; the official class then loads the
folder with ``from_pretrained`` and its tokenizer with ``AutoTokenizer`` (as inference.py does), and every tensor
of its state dict must equal the file's. Not part of the package nor of the test suite.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = {"EvfSam2Model": ("sam2", {"variant": "tiny"}), "EvfEffiSamModel": ("efficientsam", {"variant": "ti"})}

OFFICIAL = """
import json, os, sys
os.chdir({official!r}); sys.path.insert(0, {official!r})
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
from model.{module} import {cls}
model, info = {cls}.from_pretrained({folder!r}, torch_dtype=torch.float32, output_loading_info=True)
file = load_file(os.path.join({folder!r}, "model.safetensors"))
state = model.state_dict()
bad = [k for k in state if k not in file or not torch.equal(state[k], file[k])]
tok = AutoTokenizer.from_pretrained({folder!r}, padding_side="right", use_fast=False)
print(json.dumps(dict(missing=info["missing_keys"], unexpected=info["unexpected_keys"], unequal=bad[:5],
                      n_state=len(state), n_file=len(file), tokenizer=type(tok).__name__,
                      ids=tok("a cat")["input_ids"])))
"""


def export(arch: str, folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import SAM_BACKENDS

    backend, kwargs = CASES[arch]
    torch.manual_seed(0)
    model = EVFSAM(Beit3Encoder(size="base"), SAM_BACKENDS.create(backend, **kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, default=Path("/work/official"))
    p.add_argument("--python", default="/work/venv-official/bin/python", help="interpreter that imports the official code")
    args = p.parse_args()
    modules = {"EvfSam2Model": "evf_sam2", "EvfEffiSamModel": "evf_effisam"}
    for arch in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "release"
            export(arch, folder)
            code = OFFICIAL.format(official=str(args.official.resolve()), folder=str(folder), module=modules[arch], cls=arch)
            result = subprocess.run([args.python, "-c", code], capture_output=True, text=True, check=False)
            if result.returncode:
                sys.exit(f"{arch}: the official code failed:\n{result.stderr[-3000:]}")
            print(arch, result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
