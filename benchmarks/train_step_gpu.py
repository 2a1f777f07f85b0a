"""The paper recipe's training step at full size on one GPU: seconds per step and peak GPU memory.

    python -m benchmarks.train_step_gpu                                   # evf-sam-beit3l-samh, batch 16, bf16-mixed
    python -m benchmarks.train_step_gpu --strategy deepspeed_stage_2      # the paper's strategy file, on one GPU
    python -m benchmarks.train_step_gpu --preset tiny-beit3-sam1 --batch-size 2 --steps 3 --accelerator cpu  # smoke run

Random weights (no download), synthetic images (SAM's 1024 view and BEiT-3's 224 view are made from them as in
training), Lightning's Trainer with the recipe's optimizer and loss; one step is one micro-batch of
``--batch-size`` (forward, backward, optimizer step; the recipe accumulates 2 per optimizer step). The first
``--warmup`` steps (CUDA kernels, allocator, DeepSpeed buffers) are left out of the median.
"""
from __future__ import annotations

import json
import statistics
import time

from benchmarks import common


def step_timer():
    import lightning as L
    import torch

    class StepTimer(L.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def sync(self, pl_module):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.sync(pl_module)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.sync(pl_module)
            self.seconds.append(time.perf_counter() - self.start)

    return StepTimer()


def main(argv=None) -> int:
    p = common.Parser(prog="python -m benchmarks.train_step_gpu", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="evf-sam-beit3l-samh", help="an evf.list_models() name")
    p.add_argument("--batch-size", type=int, default=16, help="samples per micro-batch (the recipe: 16 per GPU)")
    p.add_argument("--steps", type=int, default=8, help="training steps (micro-batches) in all")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--strategy", default="auto", help="auto, or an experiments/strategies/ file name (deepspeed_stage_2)")
    p.add_argument("--accelerator", default="gpu")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    import lightning as L
    import torch
    import yaml
    from lightning.pytorch.cli import instantiate_class

    import evf
    from datamodules import SyntheticRefDataModule
    from evf.module import EVFSAMModule

    strategy = args.strategy
    if strategy != "auto":
        spec = yaml.safe_load((common.ROOT / "experiments" / "strategies" / f"{strategy}.yaml").read_text())
        strategy = instantiate_class((), spec["trainer"]["strategy"])
    L.seed_everything(0)
    start = time.perf_counter()
    module = EVFSAMModule(evf.create_model(args.preset), lr=1e-4)
    build_s = time.perf_counter() - start
    data = SyntheticRefDataModule(train_size=args.batch_size * args.steps, val_size=1, test_size=1,
                                  batch_size=args.batch_size, image_size=512, num_workers=4)
    timer = step_timer()
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, strategy=strategy,
                        max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, datamodule=data)
    timed = timer.seconds[args.warmup:]
    result = {"preset": args.preset, "batch_size": args.batch_size, "precision": args.precision,
              "strategy": args.strategy, "build_s": round(build_s, 1), "steps": timer.seconds,
              "median_step_s": statistics.median(timed)}
    if torch.cuda.is_available() and args.accelerator == "gpu":
        result["device"] = torch.cuda.get_device_name()
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))
    print(f"{args.preset}, batch {args.batch_size}, {args.precision}, strategy {args.strategy}: median "
          f"{result['median_step_s']:.3f} s/step over {len(timed)} steps"
          + (f", peak GPU memory {result['peak_gib']:.1f} GiB" if "peak_gib" in result else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
