"""(a) Training step without vs with the frozen SAM-embedding cache (``evf.cache``), side by side.

    OMP_NUM_THREADS=2 python -m benchmarks.train_step_cache                         # BEiT-3-Base + SAM vit_b, batch 1
    OMP_NUM_THREADS=2 python -m benchmarks.train_step_cache --batch-size 4 --steps 3
    python -m benchmarks.train_step_cache --tiny --in-process                      # smoke run

One step = preprocessing of a batch (pixel views, or a cache lookup) + forward + loss + backward + AdamW step;
1 warm-up step, then the median of ``--steps``. Each mode runs in its own subprocess (peak RSS per mode).
``benchmarks/cache_speed.py`` is the DataLoader-level variant (synthetic datamodule, interleaved modes, one process).
"""
from __future__ import annotations

import statistics
import sys
import tempfile

import torch

from benchmarks import common

NAME = "train"


def case_train(c: dict) -> dict:
    """Median seconds of one training step, with pixels or (``cache``) embeddings read from a cache folder."""
    model = common.build_model(c["encoder"], c["sam"]).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    samples = common.raw_samples(c["batch_size"] * (c["steps"] + 1))
    pre = model.preprocessor()
    if c.get("cache"):
        from evf.cache import EmbeddingCache

        pre = EmbeddingCache(c["cache"]).check(model.sam).preprocessor(pre)
    base = common.rss_mib()

    def step(chunk):
        batch = pre.collate([pre.sample(**s) for s in chunk])
        loss = model.loss(model(batch), batch["masks"])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    chunks = [samples[i: i + c["batch_size"]] for i in range(0, len(samples), c["batch_size"])]
    step(chunks[0])  # warm-up (allocator, first-call overheads)
    times = [common.timed(lambda ch=ch: step(ch)) for ch in chunks[1:]]
    return {"seconds": statistics.median(times), "base_mib": base}


def case_cache_build(c: dict) -> dict:
    from evf.cache import build_cache

    model = common.build_model(c["encoder"], c["sam"])
    samples = common.raw_samples(c["batch_size"] * (c["steps"] + 1))
    seconds = common.timed(lambda: build_cache(model.sam, {"train": samples}, c["cache"], batch_size=1, progress=False))
    return {"seconds": seconds, "images": len(samples), "base_mib": common.rss_mib()}


CASES = {"train": case_train, "cache": case_cache_build}


def add_arguments(p) -> None:
    p.add_argument("--batch-size", type=int, default=1, help="training batch")
    p.add_argument("--steps", type=int, help="timed training steps per mode (default 1, 3 with --full/--tiny)")


def check(args, p) -> None:
    args.steps = args.steps or (3 if args.full or args.tiny else 1)
    if args.steps < 1 or args.batch_size < 1:
        p.error(f"--steps and --batch-size must be positive, got {args.steps} and {args.batch_size}")


def report(args, run) -> list[str]:
    widths = (34, 10, 10, 14, 10)
    with tempfile.TemporaryDirectory(prefix="evf-bench-cache-") as folder:
        train = {"kind": "train", "batch_size": args.batch_size, "steps": args.steps}
        built = run({**train, "kind": "cache", "cache": folder})
        plain, cached = run(train), run({**train, "cache": folder})
    return [f"(a) training step, batch {args.batch_size}, median of {args.steps}",
            common.row(("configuration", "s/step", "speed-up", "peak RSS MiB", "+MiB"), widths),
            common.row(("without cache (SAM encoder runs)", f"{plain['seconds']:.3f}", "1.0x", *common.memory(plain)), widths),
            common.row(("with cache (evf.cache)", f"{cached['seconds']:.3f}", f"{plain['seconds'] / cached['seconds']:.1f}x",
                        *common.memory(cached)), widths),
            f"  building the cache once: {built['seconds']:.2f} s for {built['images']} images"]


def main(argv=None) -> int:
    return common.main([sys.modules[__name__]], argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
