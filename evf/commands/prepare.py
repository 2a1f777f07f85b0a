"""``evf prepare``: check a dataset folder, or run the Objects365 pre-pass.

    evf prepare <dataset> --check --root DIR [--splits train,val] [--quick] [--set key=value ...]
    evf prepare objects365 --root DIR --backend sam1 --variant vit_h --checkpoint sam_vit_h.pth --out DIR
                           [--split train] [--device cuda] [--limit N]

The pre-pass keeps the categories with exactly one instance per image and turns each kept box
into a mask with the SAM backend's box prompt. Every finished image is written atomically to
``OUT/shards_<split>/<image_id>.json``, so an interrupted run resumes where it stopped; the shards
are then merged into ``OUT/objects365_<split>.json`` (COCO format, RLE masks) and
``OUT/summary_<split>.json`` (images/annotations before and after, per-category counts).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evf.errors import OneLineParser, UserError
from evf.io import ImageReadError, read_image, write_text_atomic


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf prepare", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="refcoco, refcoco+, refcocog, refclef, grefcoco, ade20k, mapillary, lip, cihp, "
                                   "pascal_part, partimagenet or objects365")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--check", action="store_true", help="validate the folder instead of running a pre-pass")
    p.add_argument("--splits", help="comma-separated splits to check (default: the dataset's usual ones)")
    p.add_argument("--quick", action="store_true", help="check that images exist without decoding them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra datamodule argument for --check, e.g. split_by=google (value parsed as YAML)")
    p.add_argument("--backend", help="SAM backend: a registered name (sam1, sam2, ...) or a YAML file")
    p.add_argument("--variant", help="backend variant, e.g. vit_h")
    p.add_argument("--checkpoint", help="backend weights")
    p.add_argument("--tiny", action="store_true", help="the backend's tiny random-weight variant (tests)")
    p.add_argument("--out", help="output folder of the pre-pass")
    p.add_argument("--split", default="train")
    p.add_argument("--ann-file", default="{split}/zhiyuan_objv2_{split}.json", help="relative to --root")
    p.add_argument("--image-dir", default="{split}", help="relative to --root")
    p.add_argument("--limit", type=int, help="process at most this many images (trial runs)")
    p.add_argument("--device", default="cpu")
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
    """A registered backend name, or a YAML with ``class_path``/``init_args``, ``{name, **kwargs}``, or an
    experiment file (``model.model.sam``)."""
    from evf.sam import SAM_BACKENDS

    kwargs: dict[str, Any] = {}
    name, cls = spec, None
    if spec.endswith((".yaml", ".yml")):
        from evf.config_errors import read_yaml_file

        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"backend config not found: {path}")
        cfg = read_yaml_file(path, "backend config")
        cfg = cfg.get("model", {}).get("model", {}).get("sam", cfg) if "model" in cfg else cfg
        if "class_path" in cfg:
            module, _, attr = cfg["class_path"].rpartition(".")
            cls, kwargs = getattr(importlib.import_module(module), attr), dict(cfg.get("init_args") or {})
        elif "name" in cfg:
            kwargs = {k: v for k, v in cfg.items() if k != "name"}
            name = cfg["name"]
        else:
            raise UserError(f"{path}: expected 'class_path' (+ init_args) or 'name' (+ arguments) of a SAM backend")
    kwargs.update({k: v for k, v in (("variant", variant), ("checkpoint", checkpoint)) if v})
    if cls is not None:
        return cls(**kwargs)
    if name not in SAM_BACKENDS:
        raise UserError(f"unknown SAM backend {name!r}; registered: {', '.join(SAM_BACKENDS)}")
    return SAM_BACKENDS.create(name, tiny=tiny, **kwargs)


@torch.no_grad()
def segment_image(backend, image: np.ndarray, boxes_xywh: list[list[float]], device: str) -> np.ndarray:
    """Boxes in original pixels -> bool masks ``[N, H, W]`` from the backend's box prompt."""
    height, width = image.shape[:2]
    view, (h, w) = backend.image_view(image)
    embedding = backend.embed_images(view[None].to(device))
    boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in boxes_xywh], dtype=torch.float32)
    boxes = boxes * torch.tensor([w / width, h / height, w / width, h / height])  # into the SAM view's pixels
    logits = backend.decode_boxes(embedding, boxes.to(device))
    return (backend.postprocess(logits[:, 0], (h, w), (height, width)) > 0).cpu().numpy()


def prepare_objects365(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from datamodules.common import encode_rle, load_json, require_dir
    from datamodules.objects365 import PREPARED_FILE, find_image, one_instance_annotations

    if not args.backend or not args.out:
        raise UserError("evf prepare objects365 needs --backend and --out (or --check)")
    root = require_dir(args.root, "dataset root")
    coco = load_json(root / args.ann_file.format(split=args.split), "Objects365 annotation file")
    image_dir, out = root / args.image_dir.format(split=args.split), Path(args.out)
    kept = one_instance_annotations(coco["annotations"])
    by_image: dict = defaultdict(list)
    for ann in kept:
        by_image[ann["image_id"]].append(ann)
    images = [img for img in coco["images"] if img["id"] in by_image]
    shards = out / f"shards_{args.split}"
    shards.mkdir(parents=True, exist_ok=True)
    pending = [img for img in images if not (shards / f"{img['id']}.json").is_file()]
    todo = pending[: args.limit]
    print(f"objects365 {args.split}: {len(coco['images'])} images / {len(coco['annotations'])} annotations; "
          f"the one-instance filter keeps {len(images)} images / {len(kept)} annotations; "
          f"{len(images) - len(pending)} already done, "
          f"{len(todo)} to do", flush=True)
    backend = None
    if todo:  # a finished run needs no model: it only merges
        backend = load_backend(args.backend, args.variant, args.checkpoint, args.tiny).to(args.device).eval()
    failed = []
    for img in tqdm(todo, desc="box prompts", unit="img", disable=True if args.no_progress else None, file=sys.stderr):
        try:
            image = read_image(find_image(image_dir, img["file_name"]))
        except ImageReadError as exc:
            failed.append(str(exc))  # no shard: a later run retries it
            continue
        anns = by_image[img["id"]]
        masks = segment_image(backend, image, [a["bbox"] for a in anns], args.device)
        records = [{**a, "segmentation": encode_rle(m), "area": float(m.sum())} for a, m in zip(anns, masks)]
        write_text_atomic(shards / f"{img['id']}.json", json.dumps({"image_id": img["id"], "annotations": records}))
    return merge(coco, images, shards, out / PREPARED_FILE.format(split=args.split),
                 out / f"summary_{args.split}.json", failed, args.backend)


def merge(coco: dict, images: list[dict], shards: Path, target: Path, summary_path: Path, failed: list[str],
          backend: str) -> int:
    done_images, annotations = [], []
    for img in images:
        shard = shards / f"{img['id']}.json"
        if shard.is_file():
            done_images.append(img)
            annotations += json.loads(shard.read_text())["annotations"]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    summary = {
        "backend": backend,
        "before": {"images": len(coco["images"]), "annotations": len(coco["annotations"])},
        "after": {"images": len(done_images), "annotations": len(annotations)},
        "pending_images": len(images) - len(done_images), "failed_images": failed,
        "empty_masks": sum(a["area"] == 0 for a in annotations),
        "per_category": dict(Counter(names[a["category_id"]] for a in annotations).most_common()),
    }
    write_text_atomic(target, json.dumps({"images": done_images, "annotations": annotations,
                                          "categories": coco["categories"]}))
    write_text_atomic(summary_path, json.dumps(summary, indent=1))
    print(f"wrote {target}: {len(done_images)} images, {len(annotations)} annotations "
          f"({summary['pending_images']} images pending, {summary['empty_masks']} empty masks); summary {summary_path}")
    for message in failed[:3]:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.check:
        from datamodules.check import check_dataset, format_report

        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
        reports = check_dataset(args.dataset, args.root, splits, args.quick, not args.no_progress,
                                parse_overrides(args.set))
        print(format_report(args.dataset, args.root, reports))
        return 1 if any(r.fatal for r in reports) else 0
    if args.dataset != "objects365":
        raise UserError(f"{args.dataset} has no pre-pass; use --check to validate it")
    return prepare_objects365(args)
