"""Learning curve of phrase-grounding pre-training (README.md here, investigation point 5), on a GPU if there is one.

Same task as ``python -m studies.fusion.pretrain --what beit3 --grounding`` (``GroundingObjective``), with batches
made by loader workers so a GPU is kept busy; prints the training accuracy every 1000 steps and the
held-out accuracy at the end, and saves the weights in the format ``Beit3Encoder(checkpoint=...)`` reads.

    python -m studies.fusion.grounding_curve --steps 6000 --workers 10 --max_seconds 140 --out /tmp/beit3_grounded.pth
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from evf.encoders import Beit3Encoder
from evf.optim import linear_schedule
from studies.fusion.pretrain import GroundingObjective, grounding_batch, grounding_probe
from studies.fusion.pretrain.scenes import WARMUP_STEPS


class GroundingBatches(IterableDataset):
    """Endless ``grounding_batch`` batches, a different random stream per loader worker."""

    def __init__(self, encoder: Beit3Encoder, batch_size: int, seed: int):
        self.encoder, self.batch_size, self.seed = encoder, batch_size, seed

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, 77])
        while True:
            yield grounding_batch(rng, self.encoder, self.batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--max_seconds", type=float, default=float("inf"), help="stop early after this long")
    p.add_argument("--out", required=True, help="where to save the BEiT-3 weights")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    encoder = Beit3Encoder(size="tiny", mode="early")
    objective = GroundingObjective(encoder)
    data = GroundingBatches(encoder, args.batch_size, seed=0)  # workers copy the CPU encoder for its view and tokenizer
    objective.to(device)
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(WARMUP_STEPS, args.steps))
    start, hits = time.time(), []
    loader = DataLoader(data, batch_size=None, num_workers=args.workers)
    for step, (images, text, cells) in zip(range(args.steps), loader):
        pooled = objective.fused(images.to(device), text["input_ids"].to(device), text["padding_mask"].to(device))[1]
        logits = objective.cell_head(pooled)
        loss = torch.nn.functional.cross_entropy(logits, cells.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hits.append((logits.argmax(-1).cpu() == cells).float().mean().item())
        if (step + 1) % 1000 == 0:
            print(f"step {step + 1}: training accuracy {np.mean(hits[-500:]):.3f} ({time.time() - start:.0f} s)", flush=True)
        if time.time() - start > args.max_seconds:
            print(f"time cap at step {step + 1}", flush=True)
            break
    objective.cpu()
    probe = grounding_probe(objective)
    print(f"held-out cell accuracy {probe['own image']:.3f} with the caption's image, {probe['other image']:.3f} with another scene's")
    torch.save(encoder.beit3.state_dict(), args.out)


if __name__ == "__main__":
    main()
