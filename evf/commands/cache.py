"""``evf cache``: precompute the frozen SAM image embeddings of dataset split(s) once.

    evf cache --config experiments/base.yaml --config experiments/ablations/x.yaml --split train --out cache/x

The model and datamodule are built from the same YAML files as ``evf fit`` (only their ``model:``,
``data:`` and ``seed_everything:`` sections are read). Train with the cache by adding
``data.init_args.embedding_cache: cache/x`` (it is validated against the model at setup).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evf.errors import OneLineParser, UserError

READ_SECTIONS = ("model", "data", "seed_everything")


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


def build_from_configs(paths: Sequence[str]):
    """(``EVFSAM``, datamodule) from layered LightningCLI YAML files, seeded as ``evf fit`` seeds them."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import seed_everything

    from datamodules.base import RefSegDataModule
    from evf.config_errors import building_from_config, read_yaml_file
    from evf.module import EVFSAMModule

    parser = ArgumentParser(exit_on_error=False, parser_mode="omegaconf")
    parser.add_argument("--seed_everything", type=int | bool | None, default=True)
    parser.add_class_arguments(EVFSAMModule, "model", fail_untyped=False)
    parser.add_subclass_arguments(RefSegDataModule, "data", fail_untyped=False, required=True)
    cfg = None
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config not found: {path}")
        data = read_yaml_file(path)
        section = {k: data[k] for k in READ_SECTIONS if k in data}
        try:
            cfg = parser.parse_object(section, cfg_base=cfg, defaults=cfg is None)
        except Exception as exc:  # noqa: BLE001  jsonargparse reports unknown keys / bad types as ArgumentError
            raise UserError(f"config {path}: {' '.join(str(exc).split())[:300]}") from None
    seed = cfg.seed_everything
    if seed is not False:
        seed_everything(seed if isinstance(seed, int) and not isinstance(seed, bool) else None, workers=True)
    with building_from_config(f"config {paths[-1]}"):
        objects = parser.instantiate_classes(cfg)
    return objects.model.model, objects.data


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    import torch

    from evf.cache import build_cache, cache_lock

    with cache_lock(args.out):  # before the model loads: a second writer stops at once, naming the first
        model, datamodule = build_from_configs(args.config)
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
