"""EfficientSAM-S / -Ti backend (paper Tab.5), on our compact module with the official state-dict keys."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import load_into, load_state_dict, select_prefix
from evf.config_errors import ConfigError
from evf.sam.base import SAM_BACKENDS, SamBackend
from evf.sam.efficientsam_model import CONFIGS, EfficientSam
from evf.sam.sam2 import SquareStretchView  # HEAD's EfficientSAM view is SAM-2's
from evf.transforms import resize_longest_side_normalized


@dataclass(frozen=True)
class LongestSideStretchView:
    """EfficientSAM view of the official EVF-SAM code before commit 9d00853 (HEAD uses ``SquareStretchView``):
    the SAM-1 longest-side resize and normalisation, then a bilinear stretch (float, no antialias) to ``size``².

    Returns ``(image [3, size, size], input_size (h, w) of the longest-side resize)``.
    """

    size: int = 1024

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x, (h, w) = resize_longest_side_normalized(image, self.size)
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)[0]
        return x, (h, w)


CHECKPOINT_PREFIXES = ("visual_model.", "sam.model.", "")
# Image views of the official EVF-SAM code (inference.py ``sam_preprocess(model_type="effi")``):
VIEWS = {
    "stretch": lambda size: SquareStretchView(size, resize="tensor"),  # HEAD (9d00853 and later)
    "longest_side_stretch": LongestSideStretchView,  # before 9d00853: longest side, normalise, stretch
}


@SAM_BACKENDS.register("efficientsam", tiny={"variant": "toy"})
class EfficientSamBackend(SamBackend):
    """EfficientSAM prompted by the text token alone (it has no dense/no-mask embedding).

    Args:
        variant: ``s`` (EfficientSAM-S, paper Tab.5), ``ti`` or ``toy`` (tests).
        checkpoint: official ``efficient_sam_vits.pt`` / ``efficient_sam_vitt.pt`` (``model`` dict) or an
            EVF-SAM file with ``visual_model.`` keys; loaded with ``strict=True``.
        view: ``stretch`` (default): the official code since commit 9d00853 (HEAD): bilinear stretch of the
            uint8 image to 1024x1024, then SAM's 0-255 mean/std. ``longest_side_stretch``: the code before
            9d00853: SAM-1's longest-side resize and normalisation, then a float bilinear stretch.
        train_prompt_encoder: accepted for a uniform Tab.6 interface; text prompts use none of
            EfficientSAM's prompt-encoder parameters, so it has no effect on training.
    """

    # A text token uses no prompt-encoder parameter (only its fixed positional-encoding buffer); the IoU head feeds no loss.
    NOT_REACHED_BY_TEXT = ("model.prompt_encoder.", "model.mask_decoder.iou_prediction_head.")

    def __init__(self, variant: str = "s", checkpoint: str | None = None, view: str = "stretch",
                 train_prompt_encoder: bool = True, train_mask_decoder: bool = True):
        super().__init__(train_prompt_encoder, train_mask_decoder)
        if variant not in CONFIGS:
            raise ConfigError(f"unknown EfficientSAM variant {variant!r}; choose from {sorted(CONFIGS)}")
        if view not in VIEWS:
            raise ConfigError(f"unknown EfficientSAM view {view!r}; choose from {sorted(VIEWS)}")
        self.variant = variant
        self.view = view
        self.name = f"efficientsam_{variant}"
        self.model = EfficientSam(CONFIGS[variant])
        if checkpoint:
            load_into(self.model, select_prefix(load_state_dict(checkpoint), CHECKPOINT_PREFIXES), checkpoint)
        self.prompt_dim = CONFIGS[variant].neck_dim
        self.image_size = CONFIGS[variant].img_size
        self.freeze()

    @property
    def image_encoder(self) -> nn.Module:
        return self.model.image_encoder

    @property
    def image_view(self) -> SquareStretchView | LongestSideStretchView:
        return VIEWS[self.view](self.image_size)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"prompt_encoder": self.model.prompt_encoder, "mask_decoder": self.model.mask_decoder}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Also accepts ONE embedding ``[1, C, h, w]`` for ``N`` prompts. Output: mask token 0, as the official code."""
        masks, iou = self.run_decoder(embeddings, prompt_tokens)
        return masks[:, :1], iou[:, :1]

    def run_decoder(self, embeddings: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(embeddings) not in (1, len(sparse)):
            raise ValueError(f"{len(embeddings)} embeddings for {len(sparse)} prompts: give one per prompt or one in all")
        embeddings = embeddings.expand(sparse.shape[0], -1, -1, -1)  # .shape, not len(): stays dynamic in ONNX
        return self.model.mask_decoder(embeddings, self.model.prompt_encoder.get_dense_pe().to(embeddings.dtype),
                                       sparse.to(embeddings.dtype))

    def postprocess(self, logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        """As ``EvfEffiSamModel.postprocess_masks``: the view stretched the image over the whole square, so one
        bilinear resize to the original size, no crop, computed in the logits' own dtype (then fp32)."""
        shape = logits.shape
        x = F.interpolate(logits.reshape(-1, 1, *shape[-2:]), size=tuple(int(s) for s in original_size),
                          mode="bilinear", align_corners=False)
        return x.reshape(*shape[:-2], *x.shape[-2:]).float()
