"""Write the state-dict keys (name, shape, dtype) of the official EVF-SAM model classes as test fixtures.

The fixtures are an independent reference for tests/test_release_keys.py: they come from the
official classes themselves (hustvl/EVF-SAM), not from our reading of them. Run with the
environment that imports the official code (torchscale, fairscale, hydra, transformers):

    /work/venv-official/bin/python tools/parity/dump_official_keys.py [--official /work/official]

Not part of the package nor of the test suite. Models are built without weights: on the meta device,
or, where the official builder needs real tensor values (Hiera calls ``.item()`` on a schedule), with
only the parameters on meta; a plain CPU build is the last resort.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

# (official class, sam_scale, mm_extractor_scale): every SAM scale each class builds, BEiT-3 base only for SAM-1
MODELS = [
    ("EvfSamModel", "huge", "large"),
    ("EvfSamModel", "huge", "base"),
    ("EvfSam2Model", "large", "large"),
    ("EvfSam2Model", "tiny", "large"),
    ("EvfEffiSamModel", "small", "large"),
    ("EvfEffiSamModel", "tiny", "large"),
]
MODULES = {"EvfSamModel": "model.evf_sam", "EvfSam2Model": "model.evf_sam2", "EvfEffiSamModel": "model.evf_effisam"}
BEIT3_WIDTH = {"base": 768, "large": 1024}


@contextlib.contextmanager
def parameters_on_meta():
    """Parameters go to the meta device as they are registered; buffers stay real tensors."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build(cls, config) -> tuple[nn.Module, str]:
    """The model and how it was built: ``meta``, ``meta-parameters`` or ``cpu``."""
    try:
        with torch.device("meta"):
            return cls(config), "meta"
    except Exception as exc:  # noqa: BLE001 (any builder failure on meta: try the next way)
        print(f"  meta build failed ({type(exc).__name__}); parameters on meta only", file=sys.stderr)
    try:
        with parameters_on_meta():
            return cls(config), "meta-parameters"
    except Exception as exc:  # noqa: BLE001
        print(f"  parameters-on-meta build failed ({type(exc).__name__}); building on the CPU", file=sys.stderr)
    return cls(config), "cpu"


def dump(official: Path, out: Path) -> None:
    os.chdir(official)  # the vendored SAM-2 finds its Hydra configs relative to the checkout
    sys.path.insert(0, str(official))
    import importlib

    from model.configuration_evf import EvfConfig

    out.mkdir(parents=True, exist_ok=True)
    for name, sam_scale, mm_scale in MODELS:
        start = time.time()
        cls = getattr(importlib.import_module(MODULES[name]), name)
        config = EvfConfig(hidden_size=BEIT3_WIDTH[mm_scale], out_dim=256, sam_scale=sam_scale, mm_extractor_scale=mm_scale)
        model, how = build(cls, config)
        state = model.state_dict()
        record = {
            "class": name, "sam_scale": sam_scale, "mm_extractor_scale": mm_scale, "built_on": how,
            "source": "hustvl/EVF-SAM, official classes built by tools/parity/dump_official_keys.py",
            "numel": sum(v.numel() for v in state.values()),
            "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()],
        }
        path = out / f"{name}-{sam_scale}-{mm_scale}.json.gz"
        # mtime 0: the same keys give a byte-identical file, so a re-run shows no spurious git diff
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(json.dumps(record, indent=0).encode())
        print(f"{path.name}: {len(state)} keys, {record['numel']:,} values, built on {how}, {time.time() - start:.1f} s")
        del model, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=Path("/work/official"), help="official EVF-SAM checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests" / "data" / "official_keys")
    args = parser.parse_args()
    dump(args.official.resolve(), args.out.resolve())


if __name__ == "__main__":
    main()
