"""Exploration behind README.md ("pre-training variants"): pre-train tiny BEiT-3 / ViLT variants,
probe them (``studies.fusion.pretrain.location_probe``), then fine-tune early / text / late rows, 600 steps each.

Runs about 20 single-thread CPU processes at once. It was run once on the 16 CPU cores of a lent GPU
machine (7 min); its output is results/exploration_h200_cpu.log. Needs a pre-trained tiny SAM at
weights/mini/sam1_tiny.pth (``python -m studies.fusion.pretrain --what sam``). At that run the captions were drawn from the
benchmark's own scenes (two colours x two shapes, so most phrases were ambiguous); the pre-training now
captions scenes of any colour and shape (``caption_scene``), and its location probe uses matched
captions only (at that run it mixed in mismatched ones, so the log's probe numbers are not evidence).

    OUT=/tmp/explore python -m studies.fusion.exploration      # from the repository root
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

OUT = os.environ.get("OUT", "/tmp/explore")
WEIGHTS = os.path.join(OUT, "weights")
SAM = os.path.join("weights", "mini", "sam1_tiny.pth")
# (name, family, size, objects per caption (0 = all), steps, lr, threads)
PRETRAINING = [("b_tiny_all", "beit3", "tiny", 0, 3000, 1e-3, 1), ("b_tiny_1", "beit3", "tiny", 1, 3000, 1e-3, 1),
               ("b_tiny_2", "beit3", "tiny", 2, 3000, 1e-3, 1), ("b_tiny_1_lr3", "beit3", "tiny", 1, 3000, 3e-3, 1),
               ("b_mini_1", "beit3", "mini", 1, 1500, 1e-3, 2), ("b_mini_all", "beit3", "mini", 0, 1500, 1e-3, 2),
               ("v_tiny_1", "vilt", "tiny", 1, 3000, 1e-3, 1), ("v_tiny_all", "vilt", "tiny", 0, 3000, 1e-3, 1)]
# Fine-tuning with a random-init encoder (and the pre-trained SAM), run while the pre-training runs.
SCRATCH = [(f"ft_scratch_{mode}_{steps}", "beit3", "tiny", mode, "", steps, 2e-3, 0)
           for steps in (1800, 600) for mode in ("early", "text")]


def say(message: str) -> None:
    print(message, flush=True)
    with open(os.path.join(OUT, "log.txt"), "a", encoding="utf-8") as log:
        log.write(message + "\n")


def build(family: str, size: str, mode: str, weights: str | None):
    from evf.encoders import Beit3Encoder, ViltEncoder

    if family == "beit3":
        return Beit3Encoder(size=size, mode=mode, checkpoint=weights)
    return ViltEncoder(pretrained=weights, mode=mode, size=size)


def pretrain(name: str, family: str, size: str, objects: str, steps: str, lr: str) -> dict:
    import numpy as np
    import torch

    from studies.fusion.pretrain import location_probe, pretrain_encoder, save_encoder

    torch.manual_seed(0)
    start, encoder = time.time(), build(family, size, "early", None)
    objective = pretrain_encoder(encoder, int(steps), lr=float(lr), objects=int(objects) or None, log=None)
    save_encoder(family, encoder, os.path.join(WEIGHTS, name))
    return {"name": name, "probe": location_probe(objective), "loss": float(np.mean(objective.losses[-100:])),
            "time": time.time() - start}


def finetune(name: str, family: str, size: str, mode: str, weights: str, steps: str, lr: str, seed: str) -> dict:
    import lightning as L

    from datamodules.spatial import SpatialRefDataModule
    from evf.model import EVFSAM
    from evf.module import EVFSAMModule
    from evf.sam import Sam1Backend

    L.seed_everything(int(seed))
    start = time.time()
    encoder = build(family, size, mode, os.path.join(WEIGHTS, weights) if weights else None)
    module = EVFSAMModule(EVFSAM(encoder, Sam1Backend(variant="tiny", checkpoint=SAM)), lr=float(lr), warmup_steps=50)
    data = SpatialRefDataModule(train_size=20000, val_size=4, test_size=300, seed=0, batch_size=16)
    trainer = L.Trainer(accelerator="cpu", max_steps=int(steps), limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    result = trainer.test(module, datamodule=data, verbose=False)[0]
    return {"name": name, "cIoU": result["test/cIoU"], "gIoU": result["test/gIoU"], "time": time.time() - start}


def launch(args: list, threads: int = 1) -> dict | None:
    """One job in its own process (``OMP_NUM_THREADS=threads``); its JSON result line, logged."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "studies.fusion.exploration", *map(str, args)], env=env, capture_output=True,
                          text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PRE ", "FT "))]
    say(lines[-1] if lines else f"FAILED {args}: {done.stderr[-1500:]}")
    return json.loads(lines[-1].split(" ", 1)[1]) if lines else None


def grounding_gap(result: dict | None) -> float:
    return result["probe"]["own image"] - result["probe"]["other image"] if result else -1.0


def main() -> None:
    os.makedirs(WEIGHTS, exist_ok=True)
    start = time.time()
    with ThreadPoolExecutor(20) as pool:
        pretrained = {p[0]: pool.submit(launch, ["pre", *p[:6]], p[6]) for p in PRETRAINING}
        jobs = [pool.submit(launch, ["ft", *s]) for s in SCRATCH]

        def best_of(prefix: str, family: str, size: str, rows: list[tuple]) -> list:
            """Fine-tune ``rows`` (mode, seed, lr) from the variant whose probe shows the most grounding."""
            results = {n: f.result() for n, f in pretrained.items() if n.startswith(prefix)}
            best = max(results, key=lambda n: grounding_gap(results[n]))
            say(f"chosen {best} at {time.time() - start:.0f}s")
            return [pool.submit(launch, ["ft", f"{best}_{m}_s{seed}_lr{lr}", family, size, m, best, 600, lr, seed])
                    for m, seed, lr in rows]

        jobs += best_of("v_", "vilt", "tiny", [("early", 0, 2e-3), ("text", 0, 2e-3), ("late", 0, 2e-3)])
        jobs += best_of("b_tiny", "beit3", "tiny", [("early", 0, 2e-3), ("text", 0, 2e-3), ("late", 0, 2e-3), ("early", 1, 2e-3),
                                                    ("text", 1, 2e-3), ("early", 0, 5e-4), ("text", 0, 5e-4)])
        jobs += best_of("b_mini", "beit3", "mini", [("early", 0, 2e-3), ("text", 0, 2e-3)])
        for job in jobs:
            job.result()
    say(f"all done {time.time() - start:.0f}s")


if __name__ == "__main__":
    if len(sys.argv) == 1:
        main()
    else:
        kind, *rest = sys.argv[1:]
        print(("PRE " if kind == "pre" else "FT ") + json.dumps((pretrain if kind == "pre" else finetune)(*rest)), flush=True)
