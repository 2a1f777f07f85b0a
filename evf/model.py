"""EVF-SAM as a plain ``nn.Module``: multimodal encoder -> projector -> SAM prompt token -> mask."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evf import release
from evf.data import Preprocessor
from evf.encoders import MultimodalEncoder
from evf.predictor import DEFAULT_MAX_BATCH, ImageSession, Prediction
from evf.presence import DEFAULT_PRESENCE_THRESHOLD, PresenceHead, has_target, mask_loss_over_targets, presence_bce
from evf.release import OFFICIAL_BACKENDS, OFFICIAL_PREFIXES, WEIGHT_FILES, rename_official  # noqa: F401 (re-exported)
from evf.sam import SamBackend


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-mask BCE (mean over pixels) and Dice on one ``[H, W]`` logit map; returns the weighted sum and parts."""
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid()
    dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return {"loss": bce_weight * bce + dice_weight * dice, "bce": bce, "dice": dice}


class EVFSAM(nn.Module):
    """Args:
        encoder: a multimodal-encoder plugin (feature width read from ``encoder.out_dim``).
        sam: a SAM-backend plugin (prompt width read from ``sam.prompt_dim``).
        train_encoder: paper Tab.6 switch for the multimodal encoder.
        bce_weight, dice_weight: loss weights (paper: 1.0 each).
        presence_head: add the no-target classifier of generalized RES (``evf.presence``; docs/gres.md). Off in the
            paper recipe: the module, its state dict and its outputs are then exactly those without this option.
        presence_weight: weight of the presence BCE in the loss.
        presence_threshold: at inference, masks whose presence score is below it are emptied.
    """

    def __init__(self, encoder: MultimodalEncoder, sam: SamBackend, train_encoder: bool = True,
                 bce_weight: float = 1.0, dice_weight: float = 1.0, presence_head: bool = False,
                 presence_weight: float = 1.0, presence_threshold: float = DEFAULT_PRESENCE_THRESHOLD):
        super().__init__()
        self.encoder = encoder
        self.sam = sam
        width = encoder.out_dim
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, sam.prompt_dim))
        self.encoder.requires_grad_(train_encoder)
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.presence = PresenceHead(width) if presence_head else None  # None: no parameters, no state-dict keys
        self.presence_weight = presence_weight
        self.presence_threshold = presence_threshold

    def preprocessor(self) -> Preprocessor:
        """Picklable per-sample preprocessing for dataloader workers (holds no weights)."""
        return Preprocessor(self.encoder.image_view, self.encoder.tokenizer, self.sam.image_view)

    def prompt_tokens(self, enc_images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """``[B, 1, prompt_dim]`` sparse prompt tokens from the fused feature."""
        return self.projector(self.encoder(enc_images, input_ids, padding_mask))[:, None]

    def prompt_tokens_and_presence(self, enc_images: torch.Tensor, input_ids: torch.Tensor,
                                   padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt tokens and the presence logits ``[B]`` from one encoder pass (``None`` without the head)."""
        feature = self.encoder(enc_images, input_ids, padding_mask)
        return self.projector(feature)[:, None], None if self.presence is None else self.presence(feature)[:, 0]

    def image_embeddings(self, batch: dict) -> torch.Tensor:
        if "sam_embeddings" in batch:  # read from a frozen-embedding cache
            return batch["sam_embeddings"]
        return self.sam.embed_images(batch["sam_images"])

    def forward(self, batch: dict) -> list[torch.Tensor]:
        """Mask logits at each sample's original resolution: a list of ``[H_i, W_i]`` fp32 tensors."""
        return self.forward_with_presence(batch)[0]

    def forward_with_presence(self, batch: dict) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``forward``'s mask logits and the presence logits ``[B]`` (``None`` without the presence head)."""
        tokens, presence = self.prompt_tokens_and_presence(batch["enc_images"], batch["input_ids"], batch["padding_mask"])
        low_res, _ = self.sam.decode(self.image_embeddings(batch), tokens)
        return [self.sam.postprocess(low_res[i, 0], batch["input_sizes"][i].tolist(), batch["original_sizes"][i].tolist())
                for i in range(len(low_res))], presence

    def loss(self, logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
             presence_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Mean BCE + Dice over the samples; with ``presence_logits`` (gRES), the mask loss is averaged over the
        samples that have a target only and ``presence_weight`` x the presence BCE is added (key ``presence``)."""
        parts = [bce_dice_loss(lg, m, self.bce_weight, self.dice_weight) for lg, m in zip(logits, masks)]
        if presence_logits is None:
            return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}
        present = has_target(masks)
        out = mask_loss_over_targets(parts, present)
        out["presence"] = presence_bce(presence_logits, present)
        out["loss"] = out["loss"] + self.presence_weight * out["presence"]
        return out

    def set_image(self, image: np.ndarray) -> ImageSession:
        """Embed ``image`` (``uint8 [H, W, 3]``) once; the returned session answers any number of prompts."""
        return ImageSession(self, self.preprocessor().sample(image))

    def predict(self, image: np.ndarray, prompts: Sequence[str], max_batch: int | None = DEFAULT_MAX_BATCH) -> torch.Tensor:
        """One boolean mask ``[N, H, W]`` (on the CPU) per prompt: ``set_image(image).predict(prompts, max_batch)``.

        To prompt one image several times, keep the session of ``set_image`` instead of calling this again.
        """
        if not prompts:
            raise ValueError("give at least one prompt")  # before the expensive image embedding
        return self.set_image(image).predict(prompts, max_batch)

    def predict_with_scores(self, image: np.ndarray, prompts: Sequence[str],
                            max_batch: int | None = DEFAULT_MAX_BATCH) -> Prediction:
        """``predict``'s masks with their scores (``evf.predictor.Prediction``; ``presence`` set with the head on)."""
        if not prompts:
            raise ValueError("give at least one prompt")
        return self.set_image(image).predict_with_scores(prompts, max_batch)

    def predict_video(self, frames, prompts: Sequence[str], **kwargs):
        """Track each prompt through a video (SAM-2 backends; a generator of per-frame masks): ``evf.video.predict_video``."""
        from evf.video import predict_video

        return predict_video(self, frames, prompts, **kwargs)

    # -- official release folders --------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                        device: torch.device | str | None = None, **kwargs) -> EVFSAM:
        """Load an official EVF-SAM release folder (config.json + weights + tokenizer) with ``strict=True``.

        ``path`` may also point at the weights file inside such a folder. Floating-point weights are
        converted to ``dtype`` (fp32 by default; fp16 / bf16 for GPU inference, as the official
        scripts run) and placed on ``device`` (default CPU) one tensor at a time: the process needs
        about the model's size in memory, not more. ``kwargs`` go to ``EVFSAM``.
        """
        return release.load_release(cls, path, dtype=dtype, device=device, **kwargs)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | str | None = None) -> Path:
        """Write an official release folder that ``from_pretrained`` and the official code both load:
        config.json, model.safetensors (official key names; floating weights in ``dtype``, default
        the model's own) and the encoder's tokenizer files. The folder is replaced as a whole.
        """
        if self.presence is not None:
            raise ValueError(f"{folder}: the official release format has no presence head; save this model as a checkpoint")
        return release.save_release(self, folder, dtype)
