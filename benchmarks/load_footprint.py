"""Peak memory and wall time of loading a full-size EVF-SAM release (BEiT-3-L + SAM ViT-H, 1.315B values).

    python -m benchmarks.load_footprint --write /work/tmp-release        # once: seeded random fp16 release, 2 formats
    python -m benchmarks.load_footprint --folder /work/tmp-release [--official /work/official]

``--write`` makes ``evf-sam-bin/pytorch_model.bin`` and ``evf-sam-safetensors/model.safetensors``: seeded random
fp16 tensors under the official key names and shapes, read from tests/data/official_keys (the official
classes' own key list), plus config.json as the official release has it. Each measurement runs in a fresh
subprocess, one at a time: peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``, the time is that of the load
call alone (imports excluded, reported apart). Ours is ``EVFSAM.from_pretrained(folder)`` (fp32 on CPU);
with ``--official`` also ``EvfSamModel.from_pretrained(folder, low_cpu_mem_usage=True,
torch_dtype=torch.float32)`` run by ``--official-python``. ``--readers`` adds bare reading strategies
(safetensors' memory-mapped ``safe_open``, ``torch.load`` with and without ``mmap``), each converting every
tensor to fp32 and keeping it, as a loader must. Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "data" / "official_keys" / "EvfSamModel-huge-large.json.gz"
CONFIG = {"architectures": ["EvfSamModel"], "model_type": "evf", "hidden_size": 1024, "out_dim": 256,
          "mm_extractor_scale": "large", "sam_scale": "huge", "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
          "tie_word_embeddings": False, "torch_dtype": "float16"}
FORMATS = {"bin": ("evf-sam-bin", "pytorch_model.bin"), "safetensors": ("evf-sam-safetensors", "model.safetensors")}

# Run in a fresh interpreter: prints one JSON line. {folder} / {weights} / {official} are filled in.
OURS = """
import json, resource, time
t = time.perf_counter()
import torch
import segment_anything  # imported by the load otherwise; here so that "after imports" means the same on both sides
from evf.model import EVFSAM
imports = time.perf_counter() - t
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
model = EVFSAM.from_pretrained({folder!r})
seconds = time.perf_counter() - t
assert not any(p.is_meta for p in model.parameters())
print(json.dumps(dict(seconds=seconds, imports=imports, base_kib=base, numel=sum(v.numel() for v in model.state_dict().values()),
                      dtypes=sorted({{str(p.dtype) for p in model.parameters()}}),
                      peak_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
"""
OFFICIAL = """
import json, os, resource, sys, time
os.chdir({official!r}); sys.path.insert(0, {official!r})
t = time.perf_counter()
import torch
from model.evf_sam import EvfSamModel
imports = time.perf_counter() - t
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
model = EvfSamModel.from_pretrained({folder!r}, low_cpu_mem_usage=True, torch_dtype=torch.float32)
seconds = time.perf_counter() - t
print(json.dumps(dict(seconds=seconds, imports=imports, base_kib=base, numel=sum(v.numel() for v in model.state_dict().values()),
                      dtypes=sorted({{str(p.dtype) for p in model.parameters()}}),
                      peak_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
"""
READER = """
import json, resource, time
import torch
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = {{}}
if {kind!r} == "safe_open (mmap)":
    from safetensors import safe_open
    with safe_open({weights!r}, framework="pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k).float()
else:
    state = torch.load({weights!r}, map_location="cpu", weights_only=True, mmap={kind!r} == "torch.load mmap=True")
    while state:
        k = next(iter(state))
        out[k] = state.pop(k).float()
    del state
seconds = time.perf_counter() - t
print(json.dumps(dict(seconds=seconds, base_kib=base, numel=sum(v.numel() for v in out.values()),
                      peak_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
"""


def write_release(root: Path, seed: int = 0) -> None:
    import torch

    from evf.checkpoint import write_safetensors
    from evf.tokenizer import SPM_FILENAME, toy_tokenizer_dir

    with gzip.open(KEYS, "rt") as f:
        keys = json.load(f)["keys"]
    state = {}
    for i, (name, shape, _) in enumerate(keys):  # one generator per key: the same values in every run
        gen = torch.Generator().manual_seed(seed * 100_003 + i)
        state[name] = (torch.randn(shape, generator=gen) * 0.02).half()
    for fmt, (sub, file) in FORMATS.items():
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "bin":
            torch.save(state, folder / file)
        else:
            write_safetensors(folder / file, state)
        (folder / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
        (folder / SPM_FILENAME).write_bytes((toy_tokenizer_dir() / SPM_FILENAME).read_bytes())  # loading reads no tokenizer
        print(f"wrote {folder / file}: {(folder / file).stat().st_size:,} bytes")


def measure(python: str, code: str, env: dict) -> dict:
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{python} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", type=Path, help="write the random release folders here and exit")
    p.add_argument("--folder", type=Path, help="where --write wrote them")
    p.add_argument("--official", type=Path, help="official EVF-SAM checkout: also measure its from_pretrained")
    p.add_argument("--official-python", default="/work/venv-official/bin/python")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--readers", action="store_true", help="also measure bare reading strategies")
    p.add_argument("--repeat", type=int, default=1, help="rounds of all loaders, interleaved")
    args = p.parse_args()
    if args.write:
        write_release(args.write)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    fp32_gib = None
    rows = []
    for fmt in args.formats:
        folder = args.folder / FORMATS[fmt][0]
        weights = folder / FORMATS[fmt][1]
        runs = [("ours: EVFSAM.from_pretrained", sys.executable, OURS.format(folder=str(folder)))]
        if args.official:
            runs.append(("official: EvfSamModel.from_pretrained", args.official_python,
                         OFFICIAL.format(folder=str(folder), official=str(args.official.resolve()))))
        if args.readers:
            kinds = ["safe_open (mmap)"] if fmt == "safetensors" else ["torch.load mmap=True", "torch.load mmap=False"]
            runs += [(f"reader: {k}", sys.executable, READER.format(kind=k, weights=str(weights))) for k in kinds]
        for _ in range(args.repeat):  # interleaved, so that the machine's load weighs on every loader alike
            for label, python, code in runs:
                load = os.getloadavg()
                r = measure(python, code, env)
                fp32_gib = fp32_gib or r["numel"] * 4 / 2**30
                peak, base = r["peak_kib"] / 2**20, r["base_kib"] / 2**20
                imports = f"{r['imports']:.1f}" if "imports" in r else "-"
                rows.append(f"| {fmt} | {label} | {r['seconds']:.1f} | {imports} | {peak:.2f} | {peak / fp32_gib:.2f} | "
                            f"{base:.2f} | {(peak - base) / fp32_gib:.2f} | {load[0]:.1f} |")
                print(rows[-1], flush=True)
    print(f"\nfp32 model: {fp32_gib:.2f} GiB\n")
    print("| file | loader | load s | imports s | peak RSS GiB | peak / fp32 model | RSS after imports GiB "
          "| (peak - after imports) / fp32 model | 1-min load avg at start |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
