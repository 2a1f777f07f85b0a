"""``evf cache``: precompute the frozen SAM image embeddings of dataset split(s) once.

    evf cache --config experiments/base.yaml --config experiments/ablations/x.yaml --split train --out cache/x

The model and datamodule are built from the same YAML files as ``evf fit``, by ``evf.load`` (the ``model:`` and
``data:`` groups are built, seeded by ``seed_everything:``; the rest is parsed, not used). Train with the cache by adding
``data.init_args.embedding_cache: cache/x`` (it is validated against the model at setup).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evf.errors import OneLineParser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf cache", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="experiment YAML; repeat to layer overrides")
    p.add_argument("--split", action="append", help="split(s) to embed (default: the datamodule's train split)")
    p.add_argument("--out", required=True, help="cache folder (created; an older cache there is replaced as a whole "
                   "once the new one is complete)")
    p.add_argument("--batch-size", type=int, default=4, help="images per image-encoder call")
    p.add_argument("--shard-size", type=int, default=256, help="images per safetensors shard")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="storage dtype (float32 reproduces the uncached run exactly)")
    p.add_argument("--device", default=None, help="torch device for the image encoder (default: cuda if available)")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    import torch

    from evf.cache import build_cache, cache_lock
    from evf.loading import load

    with cache_lock(args.out):  # before the model loads: a second writer stops at once, naming the first
        model, datamodule, *_ = load(args.config)  # seeded as `evf fit` seeds: the same untrained weights
        splits = args.split or [datamodule.train_split]
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        sam = model.sam.to(device)
        datasets = {split: datamodule.cache_images(split) for split in splits}
        source = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
        cache = build_cache(sam, datasets, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                            dtype=args.dtype, source=source, lock=False)
    size = sum((Path(args.out) / s).stat().st_size for s in cache.shards)
    print(f"evf cache: {len(cache)} image embeddings ({size / 2**20:.1f} MiB, {len(cache.shards)} shard(s), "
          f"splits {', '.join(splits)}) for {sam.name} -> {args.out}")
    print(f"train with it: data.init_args.embedding_cache: {args.out}")
    return 0
