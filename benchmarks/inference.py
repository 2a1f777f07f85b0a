"""Inference that does not redo work: one image, 8 prompts, three ways; and bulk images/s, side by side in one run.

    OMP_NUM_THREADS=2 python -m benchmarks.inference             # SAM-1 ViT-B + BEiT-3-Base (~12 min on 2 quiet cores)
    OMP_NUM_THREADS=2 python -m benchmarks.inference --large     # + SAM-H + BEiT-3-L (much longer on a CPU)
    python -m benchmarks.inference --large --device cuda:0        # on a GPU
    python -m benchmarks.inference --tiny --images 3             # tiny models: a smoke run

Every model is an EVF-SAM release folder with random weights (speed and memory do not depend on the values),
written first and then loaded with ``EVFSAM.from_pretrained`` in its own subprocess, so load time and peak RSS
(``ru_maxrss``) belong to that model alone. Per model: load time, first prompt (``set_image`` + 1 prompt on a
freshly loaded model), 8 prompts batched (``predict(image, 8 prompts)``), 8 prompts as 8 calls on one session
(``set_image`` once), 8 one-shot ``predict(image, [prompt])`` calls, and bulk inference (``evf.bulk.run_bulk``,
Lightning's predict loop, one device) of ``--images`` PNGs x 3 prompts with outputs written. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import PROMPTS, child_env, rss_mib, timed

MODELS = {"base": ("base", "base", "SAM ViT-B + BEiT-3-Base"), "large": ("huge", "large", "SAM ViT-H + BEiT-3-L"),
          "tiny": ("tiny", "tiny", "tiny SAM + tiny BEiT-3")}  # name -> (release sam_scale, mm_extractor_scale, label)
IMAGE_SIZE = (480, 640)  # a typical photo; SAM resizes every image to its 1024 (tiny: 64) input anyway


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large", action="store_true", help="also SAM-H + BEiT-3-L (release scale 'huge' + 'large')")
    p.add_argument("--tiny", action="store_true", help="tiny models only (smoke run)")
    p.add_argument("--images", type=int, default=20, help="images in the bulk run (3 prompts each)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0 (bulk runs on it as Lightning's one device)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per model")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    return p.parse_args()


def write_release(folder: Path, sam_scale: str, encoder_size: str) -> None:
    """An official-format release folder (config.json, model.safetensors in the official keys, tokenizer)."""
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM, OFFICIAL_BACKENDS
    from evf.sam import Sam1Backend

    torch.manual_seed(0)
    variant = OFFICIAL_BACKENDS["EvfSamModel"][1][sam_scale]["variant"]
    model = EVFSAM(Beit3Encoder(size=encoder_size), Sam1Backend(variant=variant))
    model.save_pretrained(folder)  # the toy tokenizer's files go with it: the real one is not shipped


def write_images(folder: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")


def measure(case: dict) -> dict:
    """Everything for one model, in this (fresh) process."""
    from evf.bulk import run_bulk
    from evf.bulk_inputs import collect_items
    from evf.io import read_image
    from evf.model import EVFSAM
    from evf.visualize import write_outputs

    torch.set_num_threads(case["threads"])
    out: dict = {}
    start = time.perf_counter()
    device = torch.device(case["device"])
    model = EVFSAM.from_pretrained(case["release"]).eval().to(device)
    out["load_s"], out["rss_after_load_mib"] = time.perf_counter() - start, rss_mib()
    image = read_image(Path(case["images"]) / "img000.png")
    prompts = list(PROMPTS)
    out["first_prompt_s"] = timed(lambda: model.set_image(image).predict(prompts[:1]))
    out["batched_s"] = timed(lambda: model.predict(image, prompts))

    def session_calls():
        session = model.set_image(image)
        for p in prompts:
            session.predict([p])

    out["session_s"] = timed(session_calls)
    out["one_shot_s"] = timed(lambda: [model.predict(image, [p]) for p in prompts])
    items = collect_items([case["images"]], prompts=prompts[:3])
    with tempfile.TemporaryDirectory(prefix="evf-bench-bulk-") as folder:
        def write(name, img, image_prompts, masks):
            write_outputs(Path(folder) / name, img, image_prompts, masks)

        devices = [device.index or 0] if device.type == "cuda" else 1
        out["bulk_s"] = timed(lambda: run_bulk(model, items, write, device.type, devices, progress=False))
    out["bulk_images"] = len(items)
    out["peak_rss_mib"] = rss_mib()
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_model(name: str, root: Path, images: Path, threads: int, device: str) -> dict:
    sam_scale, encoder_size, _ = MODELS[name]
    release = root / f"release-{name}"
    start = time.perf_counter()
    # written in a subprocess too: the random model it builds must not count towards the measured process
    env = child_env(threads)
    subprocess.run([sys.executable, "-m", "benchmarks.inference", "--case", json.dumps({"write": str(release), "sam_scale": sam_scale,
                                                                   "encoder": encoder_size})], env=env, check=True)
    written = time.perf_counter() - start
    case = {"release": str(release), "images": str(images), "threads": threads, "device": device}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--case", json.dumps(case)], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: measurement failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["write_release_s"] = written
    result["release_gib"] = sum(f.stat().st_size for f in release.iterdir()) / 2**30
    return result


def report(results: dict[str, dict], args, started: float, load_before: tuple) -> str:
    names = list(results)
    width = max(26, *(len(MODELS[n][2]) + 2 for n in names))

    def line(label: str, cells: list[str]) -> str:
        return label.ljust(46) + "".join(c.rjust(width) for c in cells)

    def each(fn) -> list[str]:
        return [fn(results[n]) for n in names]

    rows = [
        line("", [MODELS[n][2] for n in names]),
        line("release folder written (s, GiB)", each(lambda r: f"{r['write_release_s']:.1f} s, {r['release_gib']:.2f} GiB")),
        line("load: EVFSAM.from_pretrained (s)", each(lambda r: f"{r['load_s']:.1f}")),
        line("RSS after load (MiB)", each(lambda r: f"{r['rss_after_load_mib']:.0f}")),
        line("peak RSS, whole run (MiB)", each(lambda r: f"{r['peak_rss_mib']:.0f}")),
        *([line("peak GPU memory allocated (MiB)", each(lambda r: f"{r['peak_gpu_mib']:.0f}"))]
          if all("peak_gpu_mib" in r for r in results.values()) else []),
        line("first prompt: set_image + 1 prompt (s)", each(lambda r: f"{r['first_prompt_s']:.2f}")),
        line("8 prompts batched: predict(image, 8) (s)", each(lambda r: f"{r['batched_s']:.2f}")),
        line("8 prompts, 8 calls on one session (s)", each(lambda r: f"{r['session_s']:.2f}")),
        line("8 prompts, 8 one-shot predict calls (s)", each(lambda r: f"{r['one_shot_s']:.2f}")),
        line("  ratio one-shot / batched", each(lambda r: f"{r['one_shot_s'] / r['batched_s']:.1f}x")),
        line("  ratio one-shot / session", each(lambda r: f"{r['one_shot_s'] / r['session_s']:.1f}x")),
        line("  ratio session / batched", each(lambda r: f"{r['session_s'] / r['batched_s']:.2f}x")),
        line(f"bulk: {args.images} images x 3 prompts (s)", each(lambda r: f"{r['bulk_s']:.1f}")),
        line("  images/s", each(lambda r: f"{r['bulk_images'] / r['bulk_s']:.3f}")),
        line("  s/image vs first prompt (1 prompt)", each(lambda r: f"{r['bulk_s'] / r['bulk_images']:.2f} vs "
                                                                  f"{r['first_prompt_s']:.2f}")),
    ]
    load_after = os.getloadavg()
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    head = (f"python -m benchmarks.inference: random weights, {device}, {args.threads} torch thread(s) per model, image "
            f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, torch {torch.__version__}")
    loads = (f"load average (1/5/15 min): {' / '.join(f'{x:.2f}' for x in load_before)} before, "
             f"{' / '.join(f'{x:.2f}' for x in load_after)} after; {os.cpu_count()} CPUs; "
             f"total {time.perf_counter() - started:.0f} s")
    return "\n".join([head, "", *rows, "", loads])


def main() -> int:
    args = parse_args()
    if args.case:
        case = json.loads(args.case)
        if "write" in case:
            write_release(Path(case["write"]), case["sam_scale"], case["encoder"])
            return 0
        print(json.dumps(measure(case)))
        return 0
    started, load_before = time.perf_counter(), os.getloadavg()
    names = ["tiny"] if args.tiny else ["base", "large"] if args.large else ["base"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="evf-bench-inference-") as tmp:
        write_images(Path(tmp) / "images", args.images)
        for name in names:
            results[name] = run_model(name, Path(tmp), Path(tmp) / "images", args.threads, args.device)
            shutil.rmtree(Path(tmp) / f"release-{name}", ignore_errors=True)  # the SAM-H release is ~5 GiB: free the disk early
    print(report(results, args, started, load_before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
