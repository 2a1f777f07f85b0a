"""The multimodal-encoder plugin slot."""
from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from evf.config_errors import ConfigError
from evf.registry import Registry

ENCODERS = Registry("encoder")


class MultimodalEncoder(nn.Module, abc.ABC):
    """Turns (encoder image view, token ids, padding mask) into the one feature fed to the projector.

    Subclasses set ``out_dim`` (width of the returned feature), ``mode`` (``text``, ``late`` or
    ``early``), and provide ``image_view`` (a picklable callable ``uint8 [H,W,3] -> [3,S,S]``) and
    ``tokenizer`` (a picklable callable ``list[str] -> {input_ids, padding_mask}``), so datamodules
    ask the plugin for its preprocessing instead of copying constants.

    Fusion encoders (``has_joint_pass``) also expose their joint image-text pass for pre-training objectives
    and probes (``joint_tokens``, ``hidden_size``, ``vocab_size``, ``mask_token_id``), so that code needs no
    per-family branches; the others raise ``NotImplementedError`` there.

    ``uses_parameter`` names the parameters the chosen mode runs; every one of them reaches the
    feature, so exactly these can be trained. Subclasses end ``__init__`` with ``self.requires_grad_(True)``
    so the others (e.g. BEiT's ``mask_token``) start frozen and stay frozen.
    """

    MODES: tuple[str, ...] = ("text", "late", "early")
    # Feature choices per mode (paper Tab.12), default first; a mode not listed has one fixed feature.
    FEATURES: ClassVar[dict[str, tuple[str, ...]]] = {}
    out_dim: int
    mode: str
    has_joint_pass: ClassVar[bool] = False  # True where image and text tokens can attend to each other (joint_tokens)

    @property
    def uses_image(self) -> bool:
        return self.mode != "text"

    @property
    @abc.abstractmethod
    def image_view(self) -> Callable[[np.ndarray], torch.Tensor]:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Callable[[Sequence[str]], dict[str, torch.Tensor]]:
        raise NotImplementedError

    @abc.abstractmethod
    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """images ``[B,3,S,S]``, input_ids ``[B,L]``, padding_mask ``[B,L]`` (True = pad) -> ``[B, out_dim]``."""
        raise NotImplementedError

    # -- joint image-text pass (fusion encoders) -------------------------------------------------
    def joint_tokens(self, images: torch.Tensor, input_ids: torch.Tensor,
                     padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text tokens in one pass, whatever ``mode``: (the text tokens' outputs ``[B, L, hidden_size]``,
        one pooled feature ``[B, hidden_size]``); the inputs as in ``forward``."""
        raise NotImplementedError(self._no_joint_pass("joint_tokens"))

    @property
    def hidden_size(self) -> int:
        """Width of the token outputs of ``joint_tokens``."""
        raise NotImplementedError(self._no_joint_pass("hidden_size"))

    @property
    def vocab_size(self) -> int:
        """Rows of the text embedding table: the classes of a masked-language head."""
        raise NotImplementedError(self._no_joint_pass("vocab_size"))

    @property
    def mask_token_id(self) -> int:
        """The token id that stands for a masked word in ``joint_tokens``' input."""
        raise NotImplementedError(self._no_joint_pass("mask_token_id"))

    def _no_joint_pass(self, hook: str) -> str:
        return f"{type(self).__name__} has no joint image-text pass ({hook}): its image and text are encoded apart"

    # -- parameter accounting (paper "Params" columns) ----------------------------------------
    def uses_parameter(self, name: str) -> bool:
        """Whether the parameter ``name`` (as in ``named_parameters()``) takes part in this mode's
        forward pass, and so gets a gradient from the feature; subclasses refine it (e.g. text-only
        BEiT-3 runs only its text branch)."""
        return True

    def requires_grad_(self, requires_grad: bool = True):
        """Like ``nn.Module.requires_grad_``, but a parameter this mode never runs stays frozen: it could
        never get a gradient, and plain DDP stops on a trainable parameter that gets none."""
        super().requires_grad_(requires_grad)
        for name, param in self.named_parameters():
            if not self.uses_parameter(name):
                param.requires_grad_(False)
        return self

    def used_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if self.uses_parameter(name)}

    def parameter_count(self, used: bool = True) -> int:
        """Parameters the chosen mode runs (``used=True``) or all parameters held; works on the meta device."""
        params = self.used_parameters() if used else dict(self.named_parameters())
        return sum(p.numel() for p in params.values())

    def check_mode(self, mode: str) -> str:
        if mode not in self.MODES:
            raise ConfigError(f"{type(self).__name__} has no mode {mode!r}; choose from {self.MODES}")
        return mode
