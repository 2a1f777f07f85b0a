"""Miniature pre-training: the starting points the paper takes for granted, for the tiny models.

EVF-SAM fine-tunes a SAM trained for promptable segmentation and a BEiT-3 trained by masked data
modelling on image-text pairs. Random-init tiny models have neither; this module gives them a cheap
stand-in on synthetic scenes (never the benchmark's expressions or target masks):

- SAM: class-agnostic promptable segmentation (a box or point of a random object -> its mask), every
  part trained, as SAM itself was.
- BEiT-3 and ViLT: masked language modelling on scene captions ("red circle top left and blue square
  middle right") with the image attending jointly, plus image-text matching on the pooled token
  (another scene's caption as the negative): the objectives of BEiT-3 / ViLT pre-training.
- CLIP: its own symmetric contrastive loss on the same image-caption pairs.

``location_probe`` then says whether the encoder learned to use the image at all: it compares masked
location words predicted with the caption's own image and with another scene's (docs/results.md).

    evf pretrain --out weights/mini      # sam1_tiny.pth, beit3_tiny.pth, clip_tiny.pth, vilt_tiny/
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.spatial import RADIUS, make_spatial_scene
from datamodules.synthetic import COLORS, SHAPES, place_and_paint, texture
from evf.model import bce_dice_loss

ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
SCENE_SIZE = 96


def scene_caption(shapes, masks, height: int, width: int, rng: np.random.Generator, objects: int | None = None) -> str:
    """Visible objects as ``COLOR SHAPE ROW COLUMN`` (3x3 grid of its centre), ``objects`` of them (all
    if ``None``) in random order: a fixed order (e.g. reading order) would let the words predict each
    other without the image."""
    phrases = []
    for s, m in zip(shapes, masks):
        if m.sum() >= 4:
            row, col = min(2, int(3 * s.cy / height)), min(2, int(3 * s.cx / width))
            phrases.append(f"{s.color} {s.kind} {ROWS[row]} {COLS[col]}")
    order = rng.permutation(len(phrases))[: objects or len(phrases)]
    return " and ".join(phrases[i] for i in order)


def caption_scene(rng: np.random.Generator, size: int = SCENE_SIZE) -> tuple[np.ndarray, list, list]:
    """A scene for captioning: 3-5 objects of any colour and shape, so a ``COLOR SHAPE`` phrase almost always
    names one object (the benchmark's scenes repeat two colours and two shapes on purpose, which would make
    most captions ambiguous about where each phrase is)."""
    h, w = size, int(rng.integers(size * 3 // 4, size * 5 // 4 + 1))
    image = texture(rng, h, w)
    shapes, masks = place_and_paint(rng, image, size, int(rng.integers(3, 6)), SHAPES, list(COLORS), RADIUS)
    return np.clip(image, 0, 255).astype(np.uint8), shapes, masks


def linear_schedule(opt: torch.optim.Optimizer, steps: int, warmup: int = 50):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))


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
    sched = linear_schedule(opt, steps)
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


def mask_tokens(rng: np.random.Generator, ids: torch.Tensor, padding: torch.Tensor, prob: float) -> torch.Tensor:
    """Positions to predict: ``prob`` of each caption's tokens between BOS and EOS, at least one."""
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(len(ids)):
        n = int((~padding[b]).sum())
        inner = np.arange(1, n - 1)
        k = max(1, round(prob * len(inner)))
        chosen[b, rng.choice(inner, size=k, replace=False)] = True
    return chosen


def caption_batch(rng: np.random.Generator, encoder, batch_size: int, objects: int | None = None,
                  negatives: bool = True) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Images in the encoder's view, tokenized captions, and which pairs match (with ``negatives``, about half
    the images get the previous scene's caption instead)."""
    images, captions = [], []
    for _ in range(batch_size):
        image, shapes, masks = caption_scene(rng)
        images.append(encoder.image_view(image))
        captions.append(scene_caption(shapes, masks, *image.shape[:2], rng, objects))
    matched = torch.from_numpy(rng.random(batch_size) < 0.5) if negatives else torch.ones(batch_size, dtype=torch.bool)
    shift = np.roll(np.arange(batch_size), 1)  # a negative pairs an image with the previous scene's caption
    captions = [c if m else captions[j] for c, m, j in zip(captions, matched.tolist(), shift)]
    return torch.stack(images), encoder.tokenizer(captions), matched


class VisionLanguageObjective(nn.Module):
    """Masked language modelling (matched pairs only: a wrong caption's words are not in the image) plus
    image-text matching, on the fused token outputs of BEiT-3 or ViLT."""

    def __init__(self, encoder, mask_prob: float = 0.3):
        super().__init__()
        self.encoder, self.mask_prob = encoder, mask_prob
        if type(encoder).__name__ == "Beit3Encoder":
            dim, vocab = encoder.cfg.dim, encoder.cfg.vocab_size
            self.mask_id = len(encoder.tokenizer)  # the first unused embedding row serves as [MASK]
            if self.mask_id >= vocab:
                raise ValueError(f"no free embedding row for [MASK]: tokenizer has {self.mask_id} of {vocab}")
        else:  # ViLT: BERT vocabulary with its own [MASK]
            dim, vocab = encoder.vilt.config.hidden_size, encoder.vilt.config.vocab_size
            self.mask_id = encoder.tokenizer.tok.mask_token_id
        self.mlm_head, self.itm_head = nn.Linear(dim, vocab), nn.Linear(dim, 2)

    def fused(self, images: torch.Tensor, ids: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text token outputs ``[B, L, D]``, the matching feature ``[B, D]``)."""
        enc = self.encoder
        if type(enc).__name__ == "Beit3Encoder":
            out = enc.beit3(images, ids, padding)
            return out[:, enc.cfg.num_image_tokens:], out[:, 0]  # image [CLS]: the token EVF-SAM prompts with
        image = enc.image_tokens(images)
        out = enc.vilt(input_ids=ids, attention_mask=(~padding).long(), image_embeds=image,
                       pixel_mask=torch.ones(image.shape[:2], dtype=torch.long))
        return out.last_hidden_state[:, : ids.shape[1]], out.pooler_output

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


def pretrain_encoder(encoder, steps: int, batch_size: int = 32, lr: float = 1e-3, objects: int | None = None,
                     seed: int = 0, log=print) -> nn.Module:
    """Vision-language pre-training of a tiny BEiT-3 / ViLT (MLM + ITM) or CLIP (contrastive), on captions of
    ``objects`` objects per scene (all if ``None``); returns the objective (its heads, ``.losses`` per step)."""
    rng = np.random.default_rng([seed, 202])
    contrastive = hasattr(encoder, "clip")  # CLIP's negatives are the other captions of the batch
    objective = ContrastiveObjective(encoder) if contrastive else VisionLanguageObjective(encoder)
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    sched = linear_schedule(opt, steps)
    objective.train()
    objective.losses, start = [], time.time()
    for step in range(steps):
        loss = objective(rng, *caption_batch(rng, encoder, batch_size, objects, negatives=contrastive is False))
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
        images, text, _ = caption_batch(rng, enc, 32)
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


def build_encoder(family: str):
    """The tiny encoder of ``family`` with both towers (CLIP ``late``, the others ``early``)."""
    from evf.encoders import Beit3Encoder, ClipEncoder, ViltEncoder

    return {"beit3": lambda: Beit3Encoder(size="tiny", mode="early"), "clip": lambda: ClipEncoder(model="tiny", mode="late"),
            "vilt": lambda: ViltEncoder(size="tiny", mode="early")}[family]()


def save_encoder(family: str, encoder, path: Path) -> None:
    """In the format the encoder's own ``checkpoint`` / ``pretrained`` argument reads."""
    path = Path(path)
    if family == "vilt":  # a ViLT folder: config.json + weights + vocab.txt
        encoder.vilt.save_pretrained(path)
        shutil.copy(Path(encoder.tokenizer.path) / "vocab.txt", path / "vocab.txt")
    else:
        torch.save((encoder.beit3 if family == "beit3" else encoder.clip).state_dict(), path)


OUTPUTS = {"sam": "sam1_tiny.pth", "beit3": "beit3_tiny.pth", "clip": "clip_tiny.pth", "vilt": "vilt_tiny"}


def main(argv=None) -> int:
    from evf.sam import Sam1Backend

    p = argparse.ArgumentParser(prog="evf pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the weights (" + ", ".join(OUTPUTS.values()) + ")")
    p.add_argument("--what", nargs="+", default=list(OUTPUTS), choices=list(OUTPUTS))
    p.add_argument("--sam_steps", type=int, default=1500)
    p.add_argument("--encoder_steps", type=int, default=3000)
    p.add_argument("--objects", type=int, default=None, help="objects per caption (default: all visible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite existing weights")
    args = p.parse_args(argv)
    out = Path(args.out)
    existing = [str(out / OUTPUTS[w]) for w in args.what if (out / OUTPUTS[w]).exists()]
    if existing and not args.force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for what in args.what:
        torch.manual_seed(args.seed)
        target, tmp = out / OUTPUTS[what], out / f".{OUTPUTS[what]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if what == "sam":
            sam = Sam1Backend(variant="tiny")
            pretrain_sam(sam, args.sam_steps, seed=args.seed)
            torch.save(sam.model.state_dict(), tmp)
        else:
            encoder = build_encoder(what)
            objective = pretrain_encoder(encoder, args.encoder_steps, objects=args.objects, seed=args.seed)
            if what != "clip":
                probe = location_probe(objective)
                print(f"{what}: masked location words right {probe['own image']:.1%} of the time with the caption's image, "
                      f"{probe['other image']:.1%} with another scene's (equal: the image is not used)")
            save_encoder(what, encoder, tmp)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)  # a stopped run never leaves half-written weights under the final name
        print(f"wrote {target}")
    return 0
