"""Capacity check for the fusion study: tiny SAM-1 trained with the target's *box* as its prompt.

The box says where the target is, so no text understanding is needed: the score bounds what any
encoder can reach through this SAM backend at the same budget (README.md here).

    python -m studies.fusion.box_oracle --steps 600
    python -m studies.fusion.box_oracle --steps 600 --checkpoint weights/mini/sam1_tiny.pth   # the pre-trained SAM
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from datamodules.spatial import SpatialRefDataModule
from evf.encoders import Beit3Encoder
from evf.metrics import ReferringSegmentationMetrics
from evf.model import bce_dice_loss
from evf.optim import linear_schedule
from evf.sam import Sam1Backend


def boxes_in_view(batch: dict) -> torch.Tensor:
    """Tight box ``(x0, y0, x1, y1)`` of each target mask, scaled into the SAM view's pixels ``[B, 4]``."""
    out = []
    for mask, inp, orig in zip(batch["masks"], batch["input_sizes"], batch["original_sizes"]):
        ys, xs = np.nonzero(mask.numpy())
        scale = torch.tensor([inp[1] / orig[1], inp[0] / orig[0]] * 2, dtype=torch.float32)
        out.append(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32) * scale)
    return torch.stack(out)


def logits_for(sam: Sam1Backend, batch: dict) -> list[torch.Tensor]:
    low = sam.decode_boxes(sam.embed_images(batch["sam_images"]), boxes_in_view(batch))
    return [sam.postprocess(low[i, 0], batch["input_sizes"][i].tolist(), batch["original_sizes"][i].tolist())
            for i in range(len(low))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test_size", type=int, default=300)
    p.add_argument("--checkpoint", default=None, help="tiny SAM-1 weights to start from (python -m studies.fusion.pretrain)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    sam = Sam1Backend(variant="tiny", checkpoint=args.checkpoint)
    # The encoder only supplies the preprocessing here (views, tokenizer); it is never run.
    from evf.data import Preprocessor

    pre = Preprocessor(Beit3Encoder(size="tiny").image_view, Beit3Encoder(size="tiny").tokenizer, sam.image_view)
    data = SpatialRefDataModule(test_size=args.test_size, batch_size=16).attach(pre)
    params = [q for q in sam.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(50, args.steps))
    step = 0
    sam.train()
    while step < args.steps:
        for batch in data.loader("train", train=True):
            losses = [bce_dice_loss(lg, m)["loss"] for lg, m in zip(logits_for(sam, batch), batch["masks"])]
            opt.zero_grad()
            torch.stack(losses).mean().backward()
            opt.step()
            sched.step()
            step += 1
            if step >= args.steps:
                break
    sam.eval()
    metrics = ReferringSegmentationMetrics()
    with torch.no_grad():
        for batch in data.loader("test"):
            metrics.update([lg > 0 for lg in logits_for(sam, batch)], batch["masks"])
    values = metrics.compute()
    start = "pre-trained" if args.checkpoint else "random-init"
    print(f"box-prompted {start} tiny SAM, {args.steps} steps: test cIoU={values['cIoU']:.4f} gIoU={values['gIoU']:.4f}")


if __name__ == "__main__":
    main()
