"""ONNX export vs PyTorch on the CPU: latency per image (SAM image encoder) and per prompt, side by side, with
the mask IoU of each ONNX variant against PyTorch fp32.

    python -m benchmarks.export                                    # evf-sam-beit3l-samh, random weights
    python -m benchmarks.export --presets tiny-beit3-sam1,tiny-beit3-sam2,tiny-beit3-efficientsam
    python -m benchmarks.export --presets evf-effisam-beit3l-effisams --threads 2 --json results.json

Each preset is built with random weights (seed 0; no full-size weights are downloaded here), exported once
(fp32 + ``--quantize int8``), then every image is embedded and prompted by PyTorch fp32, onnxruntime fp32 and
onnxruntime int8 in turn, in this one process, with the same thread count. Images: real photographs found on
disk (the official EVF-SAM repository's assets, matplotlib's sample photo) unless ``--images`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

CANDIDATE_IMAGES = ("/work/official/assets/zebra.jpg", "/work/official/assets/bus.jpg")
PROMPTS = ("the zebra on the left", "the person in the middle", "[semantic] sky")


def default_images() -> list[str]:
    import matplotlib

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [p for p in (*CANDIDATE_IMAGES, str(hopper)) if Path(p).is_file()]


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> a dict (integers as ints)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = int(value) if value.isdigit() else value
    return out


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def variant_folder(folder: Path, variant: str) -> Path:
    """An export folder whose int8 image encoder is quantized as ``variant`` (an ``evf.export.QUANTIZATIONS``
    name); the other graphs are links to ``folder``'s."""
    from evf.export import GRAPHS, INT8_IMAGE_ENCODER, quantize_image_encoder

    if variant == "int8":
        return folder
    out = folder.with_name(f"{folder.name}-{variant}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for path in folder.iterdir():
        if path.name != INT8_IMAGE_ENCODER:
            (out / path.name).symlink_to(path.resolve())
    quantize_image_encoder(folder / GRAPHS["image_encoder"], out / INT8_IMAGE_ENCODER, variant)
    return out


def run_preset(name: str, images: list[str], prompts: list[str], threads: int, out_root: Path,
               int8: tuple[str, ...] = ("int8",), sam: dict | None = None) -> dict:
    """Runtime after runtime (one model in memory at a time: SAM-H + BEiT-3-L take ~4 GB per copy)."""
    import gc

    import torch

    import evf
    from evf.deploy import OnnxModel, read_image
    from evf.export import export_onnx

    torch.manual_seed(0)
    model = evf.create_model(name, sam=sam).eval()
    folder = out_root / name
    _, export_s = timed(lambda: export_onnx(model, folder, quantize="int8"))
    makers = {"torch fp32": lambda: model, "onnx fp32": lambda: OnnxModel(folder, threads=threads)}
    for variant in int8:
        quantized = variant_folder(folder, variant)
        makers[f"onnx {variant}"] = lambda f=quantized: OnnxModel(f, int8=True, threads=threads)
    rows = {k: {"image_s": [], "prompt_s": [], "iou": [], "fg": []} for k in makers}
    reference = {}
    for kind, make in makers.items():
        runner = make()
        for path in images:
            image = read_image(path)
            session, image_s = timed(lambda r=runner, i=image: r.set_image(i))
            with torch.no_grad():
                pred, prompts_s = timed(lambda s=session: s.predict_with_scores(prompts))
            masks = pred.masks.numpy() if kind == "torch fp32" else pred.masks
            ref = reference.setdefault(path, masks)
            rows[kind]["image_s"].append(image_s)
            rows[kind]["prompt_s"].append(prompts_s / len(prompts))
            rows[kind]["iou"] += [iou(m, r) for m, r in zip(masks, ref)]
            rows[kind]["fg"] += [float(m.mean()) for m in masks]
            print(f"  {name} {Path(path).name} {kind}: image {image_s:.2f} s, {prompts_s / len(prompts):.3f} s/prompt", flush=True)
        del runner, session, pred
        model = None  # the torch model goes once its runs are done
        gc.collect()
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data")}
    return {"preset": name, "threads": threads, "export_s": export_s, "images": images, "prompts": prompts,
            "runtimes": rows, "file_bytes": sizes}


def report(result: dict) -> list[str]:
    rows = result["runtimes"]
    torch_image = np.mean(rows["torch fp32"]["image_s"])
    lines = [(f"{result['preset']} (random weights), {result['threads']} threads, {len(result['images'])} images x "
              f"{len(result['prompts'])} prompts, export {result['export_s']:.0f} s, load average {os.getloadavg()[0]:.2f}"),
             f"{'runtime':<20} {'s/image':>9} {'vs torch':>8} {'s/prompt':>9} {'mask IoU mean':>13} {'min':>6} {'fg':>6}"]
    for kind, r in rows.items():
        lines.append(f"{kind:<20} {np.mean(r['image_s']):>9.2f} {torch_image / np.mean(r['image_s']):>7.2f}x "
                     f"{np.mean(r['prompt_s']):>9.3f} {np.mean(r['iou']):>13.4f} {min(r['iou']):>6.3f} {np.mean(r['fg']):>6.3f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="evf-sam-beit3l-samh", help="comma list of evf.list_models() names")
    p.add_argument("--images", nargs="*", help="photos (default: real photos found on disk)")
    p.add_argument("--prompts", default=",".join(PROMPTS), help="comma list of prompts")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of torch and onnxruntime alike")
    p.add_argument("--out", default="/tmp/evf-export-bench", help="folder for the exported graphs")
    p.add_argument("--json", help="also write the raw numbers here")
    p.add_argument("--sam", nargs="*", default=[], help="SAM-backend overrides KEY=VALUE, e.g. mask_selection=single")
    p.add_argument("--int8", default="int8", help="comma list of evf.export.QUANTIZATIONS names, one row each "
                   "(default: int8, what --quantize int8 writes)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    images = args.images or default_images()
    if not images:
        p.error("no photos found on disk; pass --images")
    results = []
    for name in args.presets.split(","):
        results.append(run_preset(name, images, args.prompts.split(","), args.threads, Path(args.out),
                                  tuple(args.int8.split(",")), parse_overrides(args.sam) or None))
        print("\n".join(report(results[-1])), flush=True)
    print("\nimages: " + ", ".join(images))
    print("fg = mean fraction of mask pixels (random weights: near 0 or 1 means the masks say little)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
