"""SAM-2 / SAM-2.1 backend (``sam2`` package): Hiera tiny / small / base_plus / large, plus a toy variant.

The image path follows the official EVF-SAM2 code (spec §4): three FPN levels (stride 4, 8, 16),
``conv_s0`` / ``conv_s1`` on the two high-resolution levels, ``no_mem_embed`` added to the stride-16
level, the mask decoder with the object-score token and the high-res features, no object-score gating.

``sam2`` builds its models from Hydra configs; that stays inside ``evf/sam/sam2_build.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from evf.checkpoint import load_into, load_state_dict, select_prefix
from evf.config_errors import ConfigError
from evf.sam.base import SAM_BACKENDS, SamBackend, dense_position_encoding, in_buffer_dtype, upsample_logits
from evf.sam.sam2_build import build_sam2_model
from evf.transforms import IMAGENET_MEAN_255, IMAGENET_STD_255, normalize, to_rgb_uint8

CHECKPOINT_PREFIXES = ("visual_model.", "sam.model.", "model.", "")
MASK_SELECTIONS = ("single", "best_iou", "stability")
STRIDES = (4, 8, 16)  # the three FPN levels the mask decoder reads
# The official EVF-SAM2 vendors SAM-2 with CXBlock's layer scale renamed ``gamma`` -> ``weight`` (spec T16),
# so its release files name the memory-encoder fuser's two layer scales differently from the ``sam2`` package.
FUSER_LAYER_SCALE = re.compile(r"^(.*memory_encoder\.fuser\.layers\.\d+\.)(gamma|weight)$")


def release_key_to_sam2(key: str) -> str:
    """A SAM-2 key as an EVF-SAM2 release names it -> the ``sam2`` package's name (other keys unchanged)."""
    match = FUSER_LAYER_SCALE.match(key)
    return match[1] + "gamma" if match else key


def sam2_key_to_release(key: str) -> str:
    """Inverse of ``release_key_to_sam2``."""
    match = FUSER_LAYER_SCALE.match(key)
    return match[1] + "weight" if match else key


@dataclass(frozen=True)
class SquareStretchView:
    """SAM-2 and EfficientSAM view: stretch to ``size``² (aspect ratio not kept, no padding), then 0-255 ImageNet norm.

    ``resize="tensor"`` is the official inference/demo path: bilinear interpolation of the **uint8**
    tensor (align_corners=False, no antialias), so the stretched pixels are rounded to integers
    before normalising. ``resize="pil"`` is the official eval.py path: PIL bilinear (antialiased).
    Returns ``(image [3, size, size], input_size (size, size))``.
    """

    size: int = 1024
    resize: str = "tensor"

    def __post_init__(self):
        if self.resize not in ("tensor", "pil"):
            raise ConfigError(f"resize must be 'tensor' or 'pil', got {self.resize!r}")

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        image = to_rgb_uint8(image)
        if self.resize == "pil":
            x = torch.from_numpy(np.array(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR)))
            x = x.permute(2, 0, 1)
        else:
            x = torch.from_numpy(image).permute(2, 0, 1)[None]
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)[0]
        return normalize(x.float(), IMAGENET_MEAN_255, IMAGENET_STD_255), (self.size, self.size)


@SAM_BACKENDS.register("sam2", tiny={"variant": "toy"})
class Sam2Backend(SamBackend):
    """SAM-2 with the text token as the only sparse prompt and the no-mask dense embedding.

    Args:
        variant: ``tiny``, ``small``, ``base_plus``, ``large`` (Hiera sizes) or ``toy`` (tests).
        version: ``"2.0"`` (what the official EVF-SAM2 builds) or ``"2.1"``.
        checkpoint: official SAM-2 file (``sam2_hiera_large.pt``, keys under ``model``) or an EVF-SAM2
            file (keys under ``visual_model.``, fuser layer scales renamed, spec T16); loaded with ``strict=True``.
        mask_selection: which of the 4 mask tokens is output outside training:
            ``best_iou`` (tokens 1-3, highest predicted IoU: official multitask code),
            ``single`` (token 0) or ``stability`` (token 0 unless unstable, then ``best_iou``:
            the first EVF-SAM2 release). Training always uses token 0, as the official training code.
        resize: SAM-2 view resize, ``tensor`` (official inference) or ``pil`` (official eval.py).
    """

    def __init__(self, variant: str = "large", version: str = "2.0", checkpoint: str | None = None,
                 mask_selection: str = "best_iou", resize: str = "tensor",
                 train_prompt_encoder: bool = True, train_mask_decoder: bool = True,
                 stability_delta: float = 0.05, stability_thresh: float = 0.98):
        super().__init__(train_prompt_encoder, train_mask_decoder)
        if mask_selection not in MASK_SELECTIONS:
            raise ConfigError(f"mask_selection must be one of {MASK_SELECTIONS}, got {mask_selection!r}")
        self.variant, self.version = variant, str(version)
        self.name = f"sam{self.version}_{variant}"
        self.mask_selection = mask_selection
        self.stability_delta, self.stability_thresh = stability_delta, stability_thresh
        self.resize = resize
        self.model = build_sam2_model(self.version, variant)
        if checkpoint:
            state = select_prefix(load_state_dict(checkpoint), CHECKPOINT_PREFIXES)
            load_into(self.model, {release_key_to_sam2(k): v for k, v in state.items()}, checkpoint)
        self.prompt_dim = self.model.sam_prompt_embed_dim
        self.image_size = self.model.image_size
        # conv_s0/conv_s1 belong to the mask decoder: fold them into the cached embedding only when
        # the decoder is frozen (4x smaller embeddings), otherwise they must see gradients.
        self.project_high_res_in_embedding = not train_mask_decoder
        self.freeze()

    # -- plugin API ---------------------------------------------------------------------------
    @property
    def image_encoder(self) -> nn.Module:
        return self.model.image_encoder

    @property
    def image_view(self) -> SquareStretchView:
        return SquareStretchView(self.image_size, self.resize)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"prompt_encoder": self.model.sam_prompt_encoder, "mask_decoder": self.model.sam_mask_decoder}

    def frozen_modules(self) -> dict[str, nn.Module]:
        modules = {"image_encoder": self.image_encoder}
        if self.project_high_res_in_embedding:
            modules.update(conv_s0=self.model.sam_mask_decoder.conv_s0, conv_s1=self.model.sam_mask_decoder.conv_s1)
        return modules

    # As SAM-1, plus the object-score head (the official EVF-SAM2 does not gate on it; no loss reads it).
    NOT_REACHED_BY_TEXT = ("model.sam_prompt_encoder.point_embeddings.", "model.sam_prompt_encoder.not_a_point_embed.",
                           "model.sam_prompt_encoder.mask_downscaling.", "model.sam_mask_decoder.iou_prediction_head.",
                           "model.sam_mask_decoder.pred_obj_score_head.")

    def freeze(self) -> None:
        self.model.requires_grad_(False)  # memory modules, no_mem_embed, obj_ptr_proj: video only or fixed
        super().freeze()

    def level_shapes(self) -> list[tuple[int, int, int]]:
        """``(channels, h, w)`` of the three packed levels, highest resolution first."""
        d = self.model.hidden_dim
        channels = (d // 8, d // 4, d) if self.project_high_res_in_embedding else (d, d, d)
        return [(c, self.image_size // s, self.image_size // s) for c, s in zip(channels, STRIDES)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> the three FPN levels flattened and concatenated: ``[B, sum(C*h*w)]``.

        One flat tensor per image, so the collate function and the embedding cache store it as is."""
        # sam2's FPN neck adds its upsampled levels in fp32: back to the input's dtype for half weights
        levels = [level.to(images.dtype) for level in self.image_encoder(images)["backbone_fpn"]]
        if self.project_high_res_in_embedding:
            levels = [self.model.sam_mask_decoder.conv_s0(levels[0]), self.model.sam_mask_decoder.conv_s1(levels[1]),
                      levels[2]]
        return torch.cat([level.flatten(1) for level in levels], dim=1)

    def unpack(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed ``[B, L]`` -> decoder inputs ``(s0 [B,d/8,S/4,S/4], s1 [B,d/4,S/8,S/8], image [B,d,S/16,S/16])``."""
        shapes = self.level_shapes()
        expected = sum(c * h * w for c, h, w in shapes)
        if embeddings.dim() != 2 or embeddings.shape[1] != expected:
            raise ValueError(f"{self.name} expects packed embeddings [B, {expected}], got {list(embeddings.shape)}")
        parts = embeddings.split([c * h * w for c, h, w in shapes], dim=1)
        s0, s1, image = (p.reshape(len(embeddings), *shape) for p, shape in zip(parts, shapes))
        if not self.project_high_res_in_embedding:
            s0, s1 = self.model.sam_mask_decoder.conv_s0(s0), self.model.sam_mask_decoder.conv_s1(s1)
        image = image + self.model.no_mem_embed.reshape(1, -1, 1, 1).to(image.dtype)
        return s0, s1, image

    def decode(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Also accepts ONE embedding ``[1, L]`` for ``N`` prompts (several prompts on one image)."""
        _, dense = self.model.sam_prompt_encoder(points=None, boxes=None, masks=None)
        return self.run_decoder(embeddings, prompt_tokens, dense)

    def decode_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        encoder = self.model.sam_prompt_encoder
        with in_buffer_dtype(encoder):
            sparse, dense = encoder(points=None, boxes=boxes.float(), masks=None)
        return self.run_decoder(embeddings, sparse, dense)[0]

    def run_decoder(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
        s0, s1, image = self.unpack(embeddings)
        encoder = self.model.sam_prompt_encoder
        if len(image) not in (1, len(sparse)):
            raise ValueError(f"{len(image)} embeddings for {len(sparse)} prompts: give one per prompt or one in all")
        masks, iou, _, _ = self.model.sam_mask_decoder.predict_masks(
            image_embeddings=image, image_pe=dense_position_encoding(encoder, image.dtype),
            sparse_prompt_embeddings=sparse.to(image.dtype), dense_prompt_embeddings=dense.to(image.dtype),
            repeat_image=len(image) != len(sparse), high_res_features=[s0, s1],
        )
        return self.select(masks, iou)

    def select(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All 4 token outputs ``[N, 4, h, w]``, ``[N, 4]`` -> the chosen one ``[N, 1, h, w]``, ``[N, 1]``."""
        if self.training or self.mask_selection == "single":
            return masks[:, :1], iou[:, :1]
        best = iou[:, 1:].argmax(dim=1) + 1
        if self.mask_selection == "stability":
            # token 0 is kept where it is stable: area(logit > delta) / area(logit > -delta) >= thresh
            flat = masks[:, 0].flatten(1)
            inner = (flat > self.stability_delta).sum(1).float()
            outer = (flat > -self.stability_delta).sum(1).float()
            stable = torch.where(outer > 0, inner / outer.clamp_min(1), torch.ones_like(outer)) >= self.stability_thresh
            best = torch.where(stable, torch.zeros_like(best), best)
        # gather, not masks[arange(N), best]: an ONNX export would freeze that N
        pick = best.view(-1, 1, 1, 1).expand(-1, 1, *masks.shape[-2:])
        return masks.gather(1, pick), iou.gather(1, best[:, None])

    def postprocess(self, logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        # the view stretched the whole image, so the low-res logits map straight onto it (no crop)
        return upsample_logits(logits, original_size)
