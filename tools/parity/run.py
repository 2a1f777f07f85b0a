"""Parity harness: official EVF-SAM vs evf, side by side, on real photos (see docs/parity.md).

    python tools/parity/run.py --checkout PATH/TO/EVF-SAM --official-python PATH/TO/venv/bin/python \
        --work /tmp/parity --rows sam1 sam2.0-L sam2.1-L effi-S effi-Ti

Each row: the official side builds the official model class with seeded random weights and writes a release
folder; both sides run their inference path on the same photos and prompts and record every intermediate; the
table gives the max abs difference per stage and the mask agreement. Nothing of the official code is imported
into this process: it runs in ``--official-python``'s environment.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# row -> (official family, what the row is)
ROWS = {
    "sam1": ("sam1", "EvfSamModel, SAM ViT-H"),
    "sam2.0-L": ("sam2", "EvfSam2Model, SAM-2.0 Hiera-L"),
    "sam2.0-T": ("sam2_tiny", "EvfSam2Model, SAM-2.0 Hiera-T"),
    "sam2.1-L": ("sam2", "EvfSam2Model image path on a SAM-2.1 Hiera-L release (2.1-only keys added)"),
    "effi-S": ("effi_s", "EvfEffiSamModel, EfficientSAM-S"),
    "effi-Ti": ("effi_ti", "EvfEffiSamModel, EfficientSAM-Ti"),
}
PROMPTS = [
    "zebra top left",
    "[semantic] sky",
    ("the man in the red shirt standing next to the large white car on the left side of the road near the tree, "
     "holding a small black dog with one hand and a blue cup with the other hand, while the woman with the yellow "
     "hat walks behind him towards the bus on the right at the bottom of the picture"),
]
PHOTOS = ("astronaut", "chelsea", "coffee")
IMAGES = ("astronaut.png", "chelsea.png", "coffee.jpg")
SAM21_ONLY = {"visual_model.no_obj_embed_spatial": (1, 64), "visual_model.obj_ptr_tpos_proj.weight": (64, 256),
              "visual_model.obj_ptr_tpos_proj.bias": (64,)}


def run(cmd: list[str], env: dict | None = None) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def linked_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in skip and not (dst / f.name).exists():
            os.link(f, dst / f.name)


def add_sam21_keys(src: Path, dst: Path) -> None:
    """A SAM-2.1 release: the 2.0 release plus the 2.1-only (video) tensors, seeded, in both weight files."""
    import torch
    from safetensors.torch import load_file, save_file

    linked_copy(src, dst, skip=("model.safetensors", "pytorch_model.bin"))
    state = load_file(str(src / "model.safetensors"))
    gen = torch.Generator().manual_seed(21)
    for key, shape in SAM21_ONLY.items():
        state[key] = torch.randn(shape, generator=gen).half()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if (src / "pytorch_model.bin").is_file():
        torch.save(state, dst / "pytorch_model.bin")


def row(args, name: str) -> tuple[list[str], bool]:
    family, what = ROWS[name]
    work = Path(args.work)
    official = [args.official_python, HERE / "official_side.py"]
    base = work / f"release_{family}_{args.beit}"
    if not (base / "config.json").is_file():
        from evf.tokenizer import SPM_FILENAME, toy_tokenizer_dir

        run([*official, "build", "--checkout", args.checkout, "--family", family, "--release", base,
             "--beit", args.beit, "--spm", toy_tokenizer_dir() / SPM_FILENAME, "--multitask", "--device", args.device,
             *(["--no-bin"] if args.quick else [])])
    release = base
    if name == "sam2.1-L":
        release = work / f"release_sam21_{args.beit}"
        if not (release / "config.json").is_file():
            add_sam21_keys(base, release)
    flavours = [("multitask", release, list(args.images))]
    if name == "effi-Ti":  # the tokenizer flavour does not depend on the SAM family: the cheapest row checks it
        plain = work / f"{release.name}_plain"
        linked_copy(release, plain, skip=("added_tokens.json",))
        flavours.append(("plain", plain, list(args.images[:1])))
    from compare import compare

    rows, ok = [f"### {name}: {what}, BEiT-3-{args.beit[0].upper()}", ""], True
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    for flavour, folder, images in flavours:
        paths = [work / "photos" / i for i in images]
        off, ours = work / f"official_{name}_{flavour}.pt", work / f"ours_{name}_{flavour}.pt"
        if not (args.reuse and off.is_file()):
            run([*official, "infer", "--checkout", args.checkout, "--family", family, "--release", folder,
                 "--images", *paths, "--prompts", prompts, "--out", off, "--device", args.device,
                 *(["--unused-keys", *SAM21_ONLY] if name == "sam2.1-L" else [])])
        check = flavour == "multitask" and not args.quick
        if not (args.reuse and ours.is_file()):
            run([sys.executable, HERE / "our_side.py", "--release", folder, "--images", *paths, "--prompts", prompts,
                 "--out", ours, "--device", args.device, *(["--check-formats"] if check else [])])
        import torch

        table, good = compare(torch.load(off), torch.load(ours))
        rows += [f"{flavour} tokenizer folder:", "", *table, ""]
        ok &= good
    return rows, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", required=True, help="a checkout of hustvl/EVF-SAM (tested at 9935dc5)")
    parser.add_argument("--official-python", required=True, help="python of an environment that runs the official code")
    parser.add_argument("--work", required=True, help="scratch folder (release folders of several GB are written here)")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS))
    parser.add_argument("--beit", choices=("base", "large"), default="large")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help=f"of {PHOTOS} (.png) and coffee.jpg")
    parser.add_argument("--device", default="cpu", help="both sides run here, fp32 (TF32 off on GPUs)")
    parser.add_argument("--reuse", action="store_true", help="keep recorded sides already in --work (resume a run)")
    parser.add_argument("--quick", action="store_true",
                        help="write model.safetensors only and skip the pytorch_model.bin == model.safetensors check")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    work = Path(args.work)
    if not (work / "photos").is_dir():
        run([args.official_python, HERE / "official_side.py", "photos", "--out", work / "photos"])
    report, all_ok = [], True
    report_file = work / f"report-{'-'.join(args.rows)}.md"
    for name in args.rows:
        rows, ok = row(args, name)
        report += rows + [f"within targets: {ok}", ""]
        all_ok &= ok
        report_file.write_text("\n".join(report))
        print("\n".join(rows), flush=True)
    print(f"report: {report_file}; all rows within targets: {all_ok}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
