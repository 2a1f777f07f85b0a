"""SAM-1 (segment-anything) backend: vit_b / vit_l / vit_h, plus a tiny variant for tests."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import load_into, load_state_dict, select_prefix
from evf.config_errors import ConfigError
from evf.sam.base import SAM_BACKENDS, SamBackend, dense_position_encoding, in_buffer_dtype, upsample_logits
from evf.transforms import resize_longest_side_normalized

# (embed_dim, depth, heads, global attention blocks) from segment-anything's build_sam.py
VIT_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
CHECKPOINT_PREFIXES = ("visual_model.", "sam.model.", "")


@dataclass(frozen=True)
class Sam1View:
    """SAM-1 view: PIL bilinear resize of the longest side to ``size``, 0-255 ImageNet norm, zero-pad bottom/right.

    Returns ``(image [3, size, size], input_size (h, w))``; ``input_size`` is needed to crop the padding back off.
    """

    size: int = 1024

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x, (h, w) = resize_longest_side_normalized(image, self.size)
        return F.pad(x, (0, self.size - w, 0, self.size - h)), (h, w)


def build_sam1(variant: str):
    """Assemble a segment-anything ``Sam`` from the package's own classes (random weights)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if variant == "tiny":
        img, patch, dim, depth, heads, glob, window, prompt_dim, mlp = 128, 8, 32, 2, 2, (1,), 4, 32, 64
    elif variant in VIT_SIZES:
        (dim, depth, heads, glob), img, patch, window, prompt_dim, mlp = VIT_SIZES[variant], 1024, 16, 14, 256, 2048
    else:
        raise ConfigError(f"unknown SAM-1 variant {variant!r}; choose from {['tiny', *VIT_SIZES]}")
    grid = img // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=dim, img_size=img, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=heads, patch_size=patch, qkv_bias=True, use_rel_pos=True, global_attn_indexes=glob,
            window_size=window, out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img, img), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=mlp, num_heads=8 if prompt_dim >= 256 else 2),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


@SAM_BACKENDS.register("sam1", tiny={"variant": "tiny"})
class Sam1Backend(SamBackend):
    """SAM-1 with the text token as the only sparse prompt and the no-mask dense embedding.

    Args:
        variant: ``vit_b``, ``vit_l``, ``vit_h`` or ``tiny``.
        checkpoint: official SAM file (``sam_vit_h_4b8939.pth``) or any file whose keys carry
            ``visual_model.`` (EVF-SAM) — loaded with ``weights_only=True`` and ``strict=True``.
    """

    # Text prompts use only ``no_mask_embed`` of the prompt encoder; the decoder's IoU head feeds no loss.
    NOT_REACHED_BY_TEXT = ("model.prompt_encoder.point_embeddings.", "model.prompt_encoder.not_a_point_embed.",
                           "model.prompt_encoder.mask_downscaling.", "model.mask_decoder.iou_prediction_head.")

    def __init__(self, variant: str = "vit_h", checkpoint: str | None = None,
                 train_prompt_encoder: bool = True, train_mask_decoder: bool = True):
        super().__init__(train_prompt_encoder, train_mask_decoder)
        self.variant = variant
        self.name = f"sam1_{variant}"
        self.model = build_sam1(variant)
        if checkpoint:
            load_into(self.model, select_prefix(load_state_dict(checkpoint), CHECKPOINT_PREFIXES), checkpoint)
        self.prompt_dim = self.model.prompt_encoder.embed_dim
        self.image_size = self.model.image_encoder.img_size
        self.freeze()

    @property
    def image_encoder(self) -> nn.Module:  # a property, so the weights appear once in the state dict
        return self.model.image_encoder

    @property
    def image_view(self) -> Sam1View:
        return Sam1View(self.image_size)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"prompt_encoder": self.model.prompt_encoder, "mask_decoder": self.model.mask_decoder}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Also accepts ONE embedding ``[1, ...]`` for ``N`` prompts (several prompts on one image)."""
        _, dense = self.model.prompt_encoder(points=None, boxes=None, masks=None)
        encoder = self.model.prompt_encoder
        image_pe = dense_position_encoding(encoder, embeddings.dtype)
        # segment-anything's decoder expands ONE image embedding over all prompts it is given,
        # so distinct images are decoded one at a time and prompts of one image together.
        groups = [(embeddings, prompt_tokens)] if len(embeddings) == 1 else zip(embeddings[:, None], prompt_tokens[:, None])
        logits, iou = [], []
        for emb, tokens in groups:
            m, s = self.model.mask_decoder(
                image_embeddings=emb, image_pe=image_pe, sparse_prompt_embeddings=tokens.to(emb.dtype),
                dense_prompt_embeddings=dense.to(emb.dtype), multimask_output=False,
            )
            logits.append(m)
            iou.append(s)
        return torch.cat(logits), torch.cat(iou)

    def decode_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Box prompts ``[N, 4]`` as ``(x0, y0, x1, y1)`` in the SAM view's pixels, ``N`` boxes on ONE embedding
        ``[1, ...]`` or one box per embedding ``[N, ...]`` -> low-res logits ``[N, 1, h, w]`` (single-mask output)."""
        encoder = self.model.prompt_encoder
        image_pe = dense_position_encoding(encoder, embeddings.dtype)
        groups = [(embeddings, boxes)] if len(embeddings) == 1 else zip(embeddings[:, None], boxes[:, None])
        logits = []
        for emb, box in groups:  # the decoder repeats ONE embedding over all prompts it is given
            with in_buffer_dtype(encoder):  # boxes meet it too
                sparse, dense = encoder(points=None, boxes=box.to(emb), masks=None)
            m, _ = self.model.mask_decoder(
                image_embeddings=emb, image_pe=image_pe, sparse_prompt_embeddings=sparse.to(emb.dtype),
                dense_prompt_embeddings=dense.to(emb.dtype), multimask_output=False,
            )
            logits.append(m)
        return torch.cat(logits)

    def postprocess(self, logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        h, w = int(input_size[0]), int(input_size[1])
        x = upsample_logits(logits, (self.image_size, self.image_size))[..., :h, :w]
        return upsample_logits(x, original_size)
