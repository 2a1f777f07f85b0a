"""Time per training step with and without the frozen-embedding cache, side by side in one run.

    OMP_NUM_THREADS=1 python -m benchmarks.cache_speed            # SAM vit_b + BEiT-3-Base, random weights, CPU

A step = next batch from the DataLoader (preprocessing included) + forward + loss + backward + AdamW step.
Uncached and cached steps are interleaved so that machine load affects both alike. The one-off cost of
building the cache (``evf cache``) is printed separately. Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from datamodules import SyntheticRefDataModule
from evf.cache import build_cache
from evf.encoders import Beit3Encoder
from evf.model import EVFSAM
from evf.sam import Sam1Backend


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sam", default="vit_b", help="SAM-1 variant")
    p.add_argument("--encoder", default="base", help="BEiT-3 size")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args()


def train_step(model: EVFSAM, optimizer: torch.optim.Optimizer, batches) -> float:
    start = time.perf_counter()
    batch = next(batches)
    loss = model.loss(model(batch), batch["masks"])["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = EVFSAM(Beit3Encoder(size=args.encoder), Sam1Backend(variant=args.sam)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    n_images = args.batch_size * (args.steps + args.warmup)

    def datamodule(cache: str | None) -> SyntheticRefDataModule:
        dm = SyntheticRefDataModule(train_size=n_images, batch_size=args.batch_size)
        dm.embedding_cache = cache
        return dm.attach(model.preprocessor(), sam=model.sam)

    with tempfile.TemporaryDirectory(prefix="evf-cache-bench-") as folder:
        start = time.perf_counter()
        build_cache(model.sam, {"train": datamodule(None).raw_dataset("train")}, folder, batch_size=args.batch_size)
        build_s = time.perf_counter() - start
        loaders = {mode: iter(datamodule(cache).train_dataloader()) for mode, cache in (("recompute", None), ("cached", folder))}
        times: dict[str, list[float]] = {mode: [] for mode in loaders}
        for step in range(args.warmup + args.steps):
            for mode, batches in loaders.items():
                seconds = train_step(model, optimizer, batches)
                if step >= args.warmup:
                    times[mode].append(seconds)
                print(f"  step {step} {mode:<9} {seconds:7.2f} s{' (warm-up)' if step < args.warmup else ''}", flush=True)

    plain, cached = statistics.mean(times["recompute"]), statistics.mean(times["cached"])
    print(f"\nSAM {args.sam} + BEiT-3-{args.encoder}, random weights, CPU, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.steps} timed steps per mode (after {args.warmup} warm-up)")
    print(f"  without cache: {plain:.2f} s/step")
    print(f"  with cache:    {cached:.2f} s/step")
    print(f"  speed-up:      {plain / cached:.1f}x")
    print(f"  building the cache: {build_s:.1f} s for {n_images} images ({build_s / n_images:.1f} s/image, paid once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
