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
from evf.predictor import DEFAULT_MAX_BATCH, ImageSession
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
    """

    def __init__(self, encoder: MultimodalEncoder, sam: SamBackend, train_encoder: bool = True,
                 bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.sam = sam
        width = encoder.out_dim
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, sam.prompt_dim))
        self.encoder.requires_grad_(train_encoder)
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def preprocessor(self) -> Preprocessor:
        """Picklable per-sample preprocessing for dataloader workers (holds no weights)."""
        return Preprocessor(self.encoder.image_view, self.encoder.tokenizer, self.sam.image_view)

    def prompt_tokens(self, enc_images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """``[B, 1, prompt_dim]`` sparse prompt tokens from the fused feature."""
        return self.projector(self.encoder(enc_images, input_ids, padding_mask))[:, None]

    def image_embeddings(self, batch: dict) -> torch.Tensor:
        if "sam_embeddings" in batch:  # read from a frozen-embedding cache
            return batch["sam_embeddings"]
        return self.sam.embed_images(batch["sam_images"])

    def forward(self, batch: dict) -> list[torch.Tensor]:
        """Mask logits at each sample's original resolution: a list of ``[H_i, W_i]`` fp32 tensors."""
        tokens = self.prompt_tokens(batch["enc_images"], batch["input_ids"], batch["padding_mask"])
        low_res, _ = self.sam.decode(self.image_embeddings(batch), tokens)
        return [self.sam.postprocess(low_res[i, 0], batch["input_sizes"][i].tolist(), batch["original_sizes"][i].tolist())
                for i in range(len(low_res))]

    def loss(self, logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = [bce_dice_loss(lg, m, self.bce_weight, self.dice_weight) for lg, m in zip(logits, masks)]
        return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}

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
        return release.save_release(self, folder, dtype)
