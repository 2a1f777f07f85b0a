"""The multimodal-encoder plugin slot."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from evf.registry import Registry

ENCODERS = Registry("encoder")


class MultimodalEncoder(nn.Module):
    """Turns (encoder image view, token ids, padding mask) into the one feature fed to the projector.

    Subclasses set ``out_dim`` (width of the returned feature), ``mode`` (``text``, ``late`` or
    ``early``), and provide ``image_view`` (a picklable callable ``uint8 [H,W,3] -> [3,S,S]``) and
    ``tokenizer`` (a picklable callable ``list[str] -> {input_ids, padding_mask}``), so datamodules
    ask the plugin for its preprocessing instead of copying constants.
    """

    MODES: tuple[str, ...] = ("text", "late", "early")
    out_dim: int
    mode: str

    @property
    def uses_image(self) -> bool:
        return self.mode != "text"

    @property
    def image_view(self) -> Callable[[np.ndarray], torch.Tensor]:
        raise NotImplementedError

    @property
    def tokenizer(self) -> Callable[[Sequence[str]], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """images ``[B,3,S,S]``, input_ids ``[B,L]``, padding_mask ``[B,L]`` (True = pad) -> ``[B, out_dim]``."""
        raise NotImplementedError

    def check_mode(self, mode: str) -> str:
        if mode not in self.MODES:
            raise ValueError(f"{type(self).__name__} has no mode {mode!r}; choose from {self.MODES}")
        return mode
