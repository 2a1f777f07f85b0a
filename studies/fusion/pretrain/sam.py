"""SAM's own pre-training in miniature: class-agnostic promptable segmentation, every part trained."""
from __future__ import annotations

import time

import numpy as np
import torch

from datamodules.spatial import make_spatial_scene
from evf.model import bce_dice_loss
from evf.optim import linear_schedule
from studies.fusion.pretrain.scenes import SCENE_SIZE, WARMUP_STEPS


def sam_prompt(rng: np.random.Generator, mask: np.ndarray, scale: float) -> dict[str, torch.Tensor]:
    """A jittered box or one positive point inside ``mask``, in the SAM view's pixels."""
    ys, xs = np.nonzero(mask)
    if rng.random() < 0.5:
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
        box = box + rng.uniform(-0.1, 0.1, size=4).astype(np.float32) * side
        return {"boxes": torch.from_numpy(box * scale)[None]}
    k = int(rng.integers(len(ys)))
    point = torch.tensor([[[(xs[k] + 0.5) * scale, (ys[k] + 0.5) * scale]]], dtype=torch.float32)
    return {"points": (point, torch.ones(1, 1, dtype=torch.int))}


def pretrain_sam(sam, steps: int, batch_size: int = 16, lr: float = 2e-3, seed: int = 0, log=print) -> list[float]:
    """Train every part of a ``Sam1Backend`` for promptable segmentation; returns the loss per step."""
    rng = np.random.default_rng([seed, 101])
    model = sam.model
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(WARMUP_STEPS, steps))
    model.train()
    losses, start = [], time.time()
    for step in range(steps):
        views, targets, prompts, sizes = [], [], [], []
        for _ in range(batch_size):
            image, _, masks = make_spatial_scene(rng, SCENE_SIZE)
            visible = [m for m in masks if m.sum() >= 4]
            mask = visible[int(rng.integers(len(visible)))]
            view, input_size = sam.image_view(image)
            views.append(view)
            targets.append(torch.from_numpy(mask))
            prompts.append(sam_prompt(rng, mask, input_size[0] / image.shape[0]))
            sizes.append((input_size, image.shape[:2]))
        embeddings = model.image_encoder(torch.stack(views))
        image_pe = model.prompt_encoder.get_dense_pe()
        loss = 0.0
        for i, prompt in enumerate(prompts):
            sparse, dense = model.prompt_encoder(points=prompt.get("points"), boxes=prompt.get("boxes"), masks=None)
            low, _ = model.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=image_pe,
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=False)
            loss = loss + bce_dice_loss(sam.postprocess(low[0, 0], *sizes[i]), targets[i])["loss"]
        loss = loss / batch_size
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % 100 == 0:
            log(f"sam step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f} ({time.time() - start:.0f} s)")
    sam.freeze()  # back to the backend's frozen/trainable split
    return losses


