"""The SAM-backend plugin slot.

A backend owns its image view, the frozen image encoder, prompt decoding and post-processing;
the model and the LightningModule never branch on the backend type.
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evf.registry import Registry

SAM_BACKENDS = Registry("SAM backend")


class SamBackend(nn.Module, abc.ABC):
    """Subclasses provide ``image_encoder`` (always frozen), ``image_view``, ``embed_images``, ``decode``
    and ``postprocess``; ``trainable_modules`` names the submodules an optimizer may update, and
    ``NOT_REACHED_BY_TEXT`` the parameters inside them that text-prompted decoding never reaches
    (point/box/mask prompt embeddings, output heads the loss does not read), which stay frozen.

    Args common to all backends:
        train_prompt_encoder / train_mask_decoder: paper Tab.6 switches.
    """

    name: str  # identifies the backend and its weights, e.g. in embedding caches
    prompt_dim: int
    image_encoder: nn.Module
    # Name prefixes (as in ``named_parameters()``) of parameters that no text-prompted ``decode`` uses, so
    # they can never get a gradient; trainable, they would stop plain DDP after its first step.
    NOT_REACHED_BY_TEXT: tuple[str, ...] = ()

    def __init__(self, train_prompt_encoder: bool = True, train_mask_decoder: bool = True):
        super().__init__()
        self.train_prompt_encoder = train_prompt_encoder
        self.train_mask_decoder = train_mask_decoder

    # -- subclass API -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def image_view(self) -> Callable[[np.ndarray], tuple[torch.Tensor, tuple[int, int]]]:
        """Picklable ``uint8 [H,W,3] -> (image [3,S,S], input_size (h, w))``."""
        raise NotImplementedError

    @abc.abstractmethod
    def trainable_modules(self) -> dict[str, nn.Module]:
        """``{"prompt_encoder": ..., "mask_decoder": ...}``: the parts the Tab.6 switches act on."""
        raise NotImplementedError

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image-encoder call ``[B,3,S,S] -> embeddings``; ``embed_images`` wraps it frozen."""
        raise NotImplementedError

    @abc.abstractmethod
    def decode(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt per embedding: embeddings ``[N, ...]``, prompt_tokens ``[N, 1, prompt_dim]``
        -> (low-res logits ``[N, 1, h, w]``, predicted IoU ``[N, 1]``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def postprocess(self, logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``[..., h, w]`` of one image -> logits at the original ``[..., H, W]`` (fp32)."""
        raise NotImplementedError

    def decode_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Box prompts ``[N, 4]`` (x0, y0, x1, y1 in the backend's view pixels), one per embedding
        (or ``N`` boxes on ONE embedding ``[1, ...]``) -> low-res logits ``[N, 1, h, w]``."""
        raise NotImplementedError(f"{type(self).__name__} does not decode box prompts")

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Every module ``embed_images`` runs; an embedding cache is valid only for their exact weights."""
        return {"image_encoder": self.image_encoder}

    # -- shared behaviour ---------------------------------------------------------------------
    def reached_by_text(self, name: str) -> bool:
        """Whether a loss on text-prompted ``decode`` outputs can send a gradient to parameter ``name``
        (frozen or not; the image encoder counts as reached, ``embed_images`` just runs it without grad)."""
        return not name.startswith(self.NOT_REACHED_BY_TEXT)

    def freeze(self) -> None:
        """Image encoder always frozen; the rest follows the switches, except what a text prompt never
        reaches, which stays frozen. Call at the end of ``__init__``."""
        self.image_encoder.requires_grad_(False)
        flags = {"prompt_encoder": self.train_prompt_encoder, "mask_decoder": self.train_mask_decoder}
        for name, module in self.trainable_modules().items():
            module.requires_grad_(flags[name])
        for name, param in self.named_parameters():
            if not self.reached_by_text(name):
                param.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.image_encoder.eval()  # frozen: no dropout/drop-path noise, even during fit
        return self

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)


def half_autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` when it is fp16/bf16; nothing for fp32."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def in_buffer_dtype(prompt_encoder: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast to the dtype of the prompt encoder's position-encoding buffer when it is half. segment-anything's
    and sam2's random-Fourier encodings build an fp32 grid and multiply it by that Gaussian buffer, which fails
    once the buffer is half (``model.to(torch.bfloat16)``, Lightning's ``bf16-true``). The official code edits its
    vendored copy instead."""
    buffer = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    return half_autocast(buffer.device, buffer.dtype)


def dense_position_encoding(prompt_encoder: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``prompt_encoder.get_dense_pe()`` in ``dtype``, the image embedding's. DeepSpeed's bf16 casts parameters
    but keeps buffers fp32, so the encoding comes out fp32 and would turn the decoder's keys fp32 against its
    bf16 weights; a half buffer is handled by ``in_buffer_dtype``."""
    with in_buffer_dtype(prompt_encoder):
        return prompt_encoder.get_dense_pe().to(dtype)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[..., h, w]`` logits in fp32 (align_corners=False, as the official code)."""
    shape = logits.shape
    x = logits.float().reshape(-1, 1, *shape[-2:])
    x = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return x.reshape(*shape[:-2], *x.shape[-2:])
