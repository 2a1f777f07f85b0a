"""EVF-SAM as a plain ``nn.Module``: multimodal encoder -> projector -> SAM prompt token -> mask."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import CheckpointError, load_into, load_state_dict
from evf.data import Preprocessor
from evf.encoders import ENCODERS, MultimodalEncoder
from evf.predictor import DEFAULT_MAX_BATCH, ImageSession
from evf.sam import SAM_BACKENDS, SamBackend

# Official EVF-SAM top-level children -> ours (spec §1). One table, applied to key prefixes.
OFFICIAL_PREFIXES = {
    "visual_model.": "sam.model.",
    "mm_extractor.beit3.": "encoder.beit3.",
    "text_hidden_fcs.0.": "projector.",
}
# config.json "architectures" -> (backend registry name, {sam_scale: backend kwargs}).
OFFICIAL_BACKENDS: dict[str, tuple[str, dict[str, dict]]] = {
    "EvfSamModel": ("sam1", {"huge": {"variant": "vit_h"}, "large": {"variant": "vit_l"},
                             "base": {"variant": "vit_b"}, "tiny": {"variant": "tiny"}}),
    # The official EvfSam2Model builds SAM **2.0** (sam2_hiera_{l,t}.yaml) and was trained with SAM-2 frozen.
    "EvfSam2Model": ("sam2", {"large": {"variant": "large", "version": "2.0"}, "tiny": {"variant": "tiny", "version": "2.0"},
                              "toy": {"variant": "toy", "version": "2.0"}}),
    "EvfEffiSamModel": ("efficientsam", {"small": {"variant": "s"}, "tiny": {"variant": "ti"}, "toy": {"variant": "toy"}}),
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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

    # -- official checkpoints -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> EVFSAM:
        """Load an official EVF-SAM release folder (config.json + weights + tokenizer) with ``strict=True``.

        ``path`` may also point at the weights file inside such a folder. ``kwargs`` go to ``EVFSAM``.
        """
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"no config.json in {folder}: not an EVF-SAM release folder")
        config = json.loads(config_file.read_text())
        arch = (config.get("architectures") or ["EvfSamModel"])[0]
        if arch not in OFFICIAL_BACKENDS:
            raise CheckpointError(f"{config_file}: unsupported architecture {arch!r}; known: {sorted(OFFICIAL_BACKENDS)}")
        backend, scales = OFFICIAL_BACKENDS[arch]
        scale = config.get("sam_scale")
        if scale not in scales:
            raise CheckpointError(f"{config_file}: unsupported sam_scale {scale!r} for {arch}")
        weights = path if path.is_file() else next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f"no weights ({' or '.join(WEIGHT_FILES)}) in {folder}")
        state = rename_official(load_state_dict(weights))
        backend_kwargs = dict(scales[scale])
        if backend == "sam2" and "sam.model.no_obj_embed_spatial" in state:  # a SAM-2.1-only key (spec T15)
            backend_kwargs["version"] = "2.1"
        encoder = ENCODERS.create("beit3", size=config.get("mm_extractor_scale", "large"), tokenizer=str(folder))
        model = cls(encoder, SAM_BACKENDS.create(backend, **backend_kwargs), **kwargs)
        load_into(model, state, str(weights))
        return model


def rename_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = next((ours + key[len(theirs):] for theirs, ours in OFFICIAL_PREFIXES.items() if key.startswith(theirs)), key)
        out[new] = value
    return out
