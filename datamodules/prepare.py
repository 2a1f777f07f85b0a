"""``evf prepare``: check a dataset folder, or run the Objects365 pre-pass.

Dataset-specific, so it lives with the datasets: ``evf/cli.py`` names this module by string (``evf`` itself
never imports ``datamodules``). The pre-pass is ``datamodules.objects365.box_prepass``.

    evf prepare <dataset> --check --root DIR [--splits train,val] [--quick] [--set key=value ...]
    evf prepare objects365 --root DIR --backend sam1 --variant vit_h --checkpoint sam_vit_h.pth --out DIR
                           [--split train] [--device cuda] [--limit N]
    evf prepare custom --root DIR --backend path/to/evf-sam [--manifest manifest.jsonl] [--out DIR]

The pre-pass keeps the categories with exactly one instance per image and turns each kept box
into a mask with the SAM backend's box prompt. Every finished image is written atomically to
``OUT/shards_<split>/<image_id>.json``, so an interrupted run resumes where it stopped; the shards
are then merged into ``OUT/objects365_<split>.json`` (COCO format, RLE masks) and
``OUT/summary_<split>.json`` (images/annotations before and after, per-category counts).
``evf prepare custom`` turns the ``bbox`` lines of a manifest into masks the same way (``datamodules.custom.box_prepass``).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evf.errors import OneLineParser, UserError


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf prepare", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="refcoco, refcoco+, refcocog, refclef, grefcoco, ade20k, mapillary, lip, cihp, "
                                   "pascal_part, partimagenet, objects365, custom or reasonseg")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--check", action="store_true", help="validate the folder instead of running a pre-pass")
    p.add_argument("--splits", help="comma-separated splits to check (default: the dataset's usual ones)")
    p.add_argument("--quick", action="store_true", help="check that images exist without decoding them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra datamodule argument for --check, e.g. split_by=google (value parsed as YAML)")
    p.add_argument("--backend", help="SAM backend: a registered name (sam1, sam2, ...), an experiment YAML "
                                     "(its model's SAM backend, built as 'evf fit' builds it) or an EVF-SAM release "
                                     "folder (its SAM)")
    p.add_argument("--variant", help="backend variant, e.g. vit_h")
    p.add_argument("--checkpoint", help="backend weights")
    p.add_argument("--tiny", action="store_true", help="the backend's tiny random-weight variant (tests)")
    p.add_argument("--out", help="output folder of the pre-pass")
    p.add_argument("--split", default="train")
    p.add_argument("--ann-file", default="{split}/zhiyuan_objv2_{split}.json", help="relative to --root")
    p.add_argument("--image-dir", default="{split}", help="relative to --root")
    p.add_argument("--limit", type=int, help="process at most this many images (trial runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--manifest", default="manifest.jsonl", help="custom: the manifest, relative to --root")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(list(argv))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_backend(spec: str, variant: str | None, checkpoint: str | None, tiny: bool):
    """A registered SAM backend (``sam1``, ``sam2``, ...) with ``--variant``/``--checkpoint``/``--tiny``, or the SAM
    backend of an experiment YAML, built by ``evf.load`` as ``evf fit`` builds it."""
    if spec.endswith((".yaml", ".yml")):
        if variant or checkpoint or tiny:
            raise UserError(f"--backend {spec} is a YAML: set the backend's variant and checkpoint there, "
                            "not with --variant/--checkpoint/--tiny")
        from evf.loading import load

        return load(spec, datamodule=False).model.sam
    if Path(spec).is_dir():  # an EVF-SAM release folder: the SAM it was trained with
        if variant or checkpoint or tiny:
            raise UserError(f"--backend {spec} is a release folder: it fixes the backend; drop --variant/--checkpoint/--tiny")
        from evf.model import EVFSAM

        return EVFSAM.from_pretrained(spec).sam
    from evf.sam import SAM_BACKENDS

    if spec not in SAM_BACKENDS:
        raise UserError(f"unknown SAM backend {spec!r}; registered: {', '.join(SAM_BACKENDS)}")
    kwargs = {k: v for k, v in (("variant", variant), ("checkpoint", checkpoint)) if v}
    return SAM_BACKENDS.create(spec, tiny=tiny, **kwargs)


def prepare_objects365(args: argparse.Namespace) -> int:
    from datamodules.objects365 import box_prepass

    if not args.backend or not args.out:
        raise UserError("evf prepare objects365 needs --backend and --out (or --check)")
    return box_prepass(args.root, args.out, lambda: load_backend(args.backend, args.variant, args.checkpoint, args.tiny),
                       args.backend, args.split, args.ann_file, args.image_dir, args.limit, args.device,
                       progress=not args.no_progress)


def prepare_custom(args: argparse.Namespace) -> int:
    from datamodules.custom import box_prepass

    if not args.backend:
        raise UserError("evf prepare custom needs --backend (or --check)")
    return box_prepass(args.root, lambda: load_backend(args.backend, args.variant, args.checkpoint, args.tiny),
                       args.backend, args.manifest, args.out, args.device, progress=not args.no_progress)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.check:
        from datamodules.check import check_dataset, format_report

        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
        overrides = parse_overrides(args.set)
        if args.dataset == "custom":
            overrides.setdefault("manifest", args.manifest)
        reports = check_dataset(args.dataset, args.root, splits, args.quick, not args.no_progress, overrides)
        print(format_report(args.dataset, args.root, reports))
        return 1 if any(r.fatal for r in reports) else 0
    if args.dataset == "custom":
        return prepare_custom(args)
    if args.dataset != "objects365":
        raise UserError(f"{args.dataset} has no pre-pass; use --check to validate it")
    return prepare_objects365(args)
