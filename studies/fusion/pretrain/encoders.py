"""Vision-language pre-training of the tiny encoders (MLM + ITM, contrastive, or phrase grounding) and the probes
that say whether an encoder uses the image for the words."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evf.io import atomic_dir, atomic_path
from evf.optim import linear_schedule
from studies.fusion.pretrain.scenes import COLS, ROWS, WARMUP_STEPS, caption_batch, grounding_batch, mask_tokens


class FusionObjective(nn.Module):
    """Base of the objectives on a fusion encoder's joint pass (BEiT-3 or ViLT: ``encoder.has_joint_pass``)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def fused(self, images: torch.Tensor, ids: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text token outputs ``[B, L, D]``, the pooled feature ``[B, D]``; BEiT-3: its image [CLS], the token
        EVF-SAM prompts with)."""
        return self.encoder.joint_tokens(images, ids, padding)


class VisionLanguageObjective(FusionObjective):
    """Masked language modelling (matched pairs only: a wrong caption's words are not in the image) plus
    image-text matching, on the fused token outputs of BEiT-3 or ViLT."""

    def __init__(self, encoder, mask_prob: float = 0.3):
        super().__init__(encoder)
        self.mask_prob = mask_prob
        self.mask_id = encoder.mask_token_id
        self.mlm_head, self.itm_head = nn.Linear(encoder.hidden_size, encoder.vocab_size), nn.Linear(encoder.hidden_size, 2)

    def forward(self, rng: np.random.Generator, images: torch.Tensor, text: dict, matched: torch.Tensor) -> torch.Tensor:
        ids, padding = text["input_ids"], text["padding_mask"]
        chosen = mask_tokens(rng, ids, padding, self.mask_prob)
        text_out, pooled = self.fused(images, ids.masked_fill(chosen, self.mask_id), padding)
        keep = chosen & matched[:, None]
        mlm = F.cross_entropy(self.mlm_head(text_out[keep]), ids[keep]) if keep.any() else text_out.sum() * 0
        return mlm + F.cross_entropy(self.itm_head(pooled), matched.long())


class ContrastiveObjective(nn.Module):
    """CLIP's own objective: symmetric InfoNCE over the batch."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, rng, images: torch.Tensor, text: dict, matched: torch.Tensor) -> torch.Tensor:
        clip = self.encoder.clip
        img = F.normalize(clip.encode_image(images), dim=-1)
        txt = F.normalize(clip.encode_text(text["input_ids"]), dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.T
        target = torch.arange(len(images))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class GroundingObjective(FusionObjective):
    """Phrase grounding: from the fused pooled token (BEiT-3's image [CLS], the token EVF-SAM prompts with),
    say in which cell of a 3x3 grid the named object is. A stand-in for the word-region alignment that
    web-scale pre-training gives BEiT-3 and that the caption objectives above do not reach at this size."""

    def __init__(self, encoder):
        super().__init__(encoder)
        self.cell_head = nn.Linear(encoder.hidden_size, 9)

    def forward(self, rng, images: torch.Tensor, text: dict, cells: torch.Tensor) -> torch.Tensor:
        _, pooled = self.fused(images, text["input_ids"], text["padding_mask"])
        return F.cross_entropy(self.cell_head(pooled), cells)


def pretrain_encoder(encoder, steps: int, batch_size: int = 32, lr: float = 1e-3, objects: int | None = None,
                     grounding: bool = False, seed: int = 0, log=print) -> nn.Module:
    """Vision-language pre-training of a tiny BEiT-3 / ViLT (MLM + ITM) or CLIP (contrastive), on captions of
    ``objects`` objects per scene (all if ``None``), or with ``grounding`` the phrase-grounding task instead
    (BEiT-3 / ViLT only); returns the objective (its heads, ``.losses`` per step)."""
    rng = np.random.default_rng([seed, 202])
    contrastive = not encoder.has_joint_pass  # CLIP: its negatives are the other captions of the batch
    if grounding and contrastive:
        raise ValueError(f"grounding pre-training needs a fusion encoder (BEiT-3 or ViLT); {type(encoder).__name__}'s "
                         "image and text never meet")
    objective = (GroundingObjective if grounding else ContrastiveObjective if contrastive else VisionLanguageObjective)(encoder)
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(WARMUP_STEPS, steps))
    objective.train()
    objective.losses, start = [], time.time()
    for step in range(steps):
        batch = grounding_batch(rng, encoder, batch_size) if grounding else \
            caption_batch(rng, encoder, batch_size, objects, negatives=not contrastive)
        loss = objective(rng, *batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        objective.losses.append(loss.item())
        if log and (step + 1) % 100 == 0:
            log(f"{type(encoder).__name__} step {step + 1}/{steps} loss {np.mean(objective.losses[-100:]):.4f} "
                f"({time.time() - start:.0f} s)")
    return objective


@torch.no_grad()
def location_probe(objective: VisionLanguageObjective, samples: int = 320, seed: int = 99) -> dict[str, float]:
    """Grounding check of an MLM-trained encoder: accuracy on one masked location word per caption, with the
    caption's own image and with another scene's image. Equal accuracies mean the words alone were used."""
    enc, rng = objective.encoder, np.random.default_rng([seed, 303])
    tok = enc.tokenizer
    location_ids = {i for w in ROWS + COLS for i in tok([w])["input_ids"][0].tolist()} - {tok.pad_id, *tok([""])["input_ids"][0].tolist()}
    objective.eval()
    hits, total = {"own image": 0, "other image": 0}, 0
    for _ in range(samples // 32):
        # every caption with its own scene: with negatives mixed in, "own" and "other" would be the same mixture
        images, text, _ = caption_batch(rng, enc, 32, negatives=False)
        ids, padding = text["input_ids"], text["padding_mask"]
        chosen = torch.zeros_like(ids, dtype=torch.bool)
        for b in range(len(ids)):
            where = [k for k in range(ids.shape[1]) if int(ids[b, k]) in location_ids]
            chosen[b, where[int(rng.integers(len(where)))]] = True
        for name, imgs in (("own image", images), ("other image", images.roll(1, 0))):
            out, _ = objective.fused(imgs, ids.masked_fill(chosen, objective.mask_id), padding)
            hits[name] += int((objective.mlm_head(out[chosen]).argmax(-1) == ids[chosen]).sum())
        total += int(chosen.sum())
    objective.train()
    return {k: v / total for k, v in hits.items()}


@torch.no_grad()
def grounding_probe(objective: GroundingObjective, samples: int = 320, seed: int = 99) -> dict[str, float]:
    """Held-out cell accuracy of a grounding-trained encoder with each caption's own image and with another
    scene's (chance: the most frequent cell, ~20 %)."""
    rng = np.random.default_rng([seed, 404])
    objective.eval()
    hits, total = {"own image": 0, "other image": 0}, 0
    for _ in range(samples // 32):
        images, text, cells = grounding_batch(rng, objective.encoder, 32)
        for name, imgs in (("own image", images), ("other image", images.roll(1, 0))):
            _, pooled = objective.fused(imgs, text["input_ids"], text["padding_mask"])
            hits[name] += int((objective.cell_head(pooled).argmax(-1) == cells).sum())
        total += len(cells)
    objective.train()
    return {k: v / total for k, v in hits.items()}


def build_encoder(family: str):
    """The tiny encoder of ``family`` with both towers (CLIP ``late``, the others ``early``)."""
    from evf.encoders import Beit3Encoder, ClipEncoder, ViltEncoder

    return {"beit3": lambda: Beit3Encoder(size="tiny", mode="early"), "clip": lambda: ClipEncoder(model="tiny", mode="late"),
            "vilt": lambda: ViltEncoder(size="tiny", mode="early")}[family]()


def save_encoder(family: str, encoder, path: Path) -> None:
    """In the format the encoder's own ``checkpoint`` / ``pretrained`` argument reads, published atomically."""
    if family == "vilt":  # a ViLT folder: config.json + weights + vocab.txt
        with atomic_dir(path) as tmp:
            encoder.vilt.save_pretrained(tmp)
            shutil.copy(Path(encoder.tokenizer.path) / "vocab.txt", tmp / "vocab.txt")
    else:
        with atomic_path(path) as tmp:
            torch.save((encoder.beit3 if family == "beit3" else encoder.clip).state_dict(), tmp)


