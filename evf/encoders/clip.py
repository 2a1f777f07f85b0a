"""CLIP (open_clip) as a multimodal-encoder plugin: text-only or late concat (paper Tab.4, Tab.5).

CLIP has no fusion layers, so the two modes are the paper's "SAM with a text encoder" (``text``)
and its simplest late fusion (``late``: text embedding ‖ image embedding, each from its own tower).
"""
from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from functools import cache, cached_property

import torch

from evf.checkpoint import load_into, load_state_dict, select_prefix
from evf.config_errors import ConfigError
from evf.encoders.base import ENCODERS, MultimodalEncoder
from evf.transforms import StretchView

# Test-sized CLIP with open_clip's own classes; the text side keeps the real BPE vocabulary and
# 77-token context so the stock open_clip tokenizer still fits it.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
OWN_CONFIGS = {"tiny": TINY_CLIP}
# open_clip checkpoints are plain state dicts; some trainers save them under "module." (DDP).
CHECKPOINT_PREFIXES = ("module.", "")
PAD_ID = 0  # open_clip's SimpleTokenizer right-pads with 0 (no real token has id 0 after <start_of_text>)


def clip_config(name: str) -> dict:
    """open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...) by name."""
    if name in OWN_CONFIGS:
        return deepcopy(OWN_CONFIGS[name])
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model {name!r}; e.g. ViT-L-14, ViT-L-14-quickgelu, ViT-H-14 or tiny")
    if cfg.get("custom_text") or "timm_model_name" in cfg.get("vision_cfg", {}):
        raise ConfigError(f"open_clip model {name!r} uses a custom text or timm tower; only plain CLIP towers are supported")
    return cfg


class ClipTokenizer:
    """open_clip's BPE tokenizer in our contract: ``list[str] -> {input_ids [B,77], padding_mask [B,77]}``.

    CLIP's text tower adds a fixed 77-entry position table, so every batch is padded to the full
    context. Picklable without its 2 MB vocabulary: workers rebuild it on first use.
    """

    pad_id = PAD_ID

    def __init__(self, model_name: str, context_length: int):
        self.model_name = model_name
        self.context_length = context_length

    @cached_property
    def tok(self):
        # Unknown names (our tiny config) fall back to open_clip's default SimpleTokenizer.
        return open_clip_tokenizer(self.model_name if self.model_name not in OWN_CONFIGS else "", self.context_length)

    def __getstate__(self) -> dict:
        return {"model_name": self.model_name, "context_length": self.context_length}

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self.tok(list(texts)).long()
        return {"input_ids": ids, "padding_mask": ids == PAD_ID}


@cache
def open_clip_tokenizer(name: str, context_length: int):
    """One tokenizer per (name, length) and process: building one reads and sorts a 49k-merge BPE table (~0.1 s)."""
    import open_clip

    return open_clip.get_tokenizer(name, context_length=context_length)


@ENCODERS.register("clip", tiny={"model": "tiny"})
class ClipEncoder(MultimodalEncoder):
    """A CLIP model of open_clip (random init, then ``checkpoint`` if given).

    Args:
        model: open_clip config name: ``ViT-L-14-quickgelu`` (OpenAI weights), ``ViT-L-14``
            (OpenCLIP laion2b weights), ``ViT-H-14`` (OpenCLIP laion2b), or ``tiny`` (tests).
        mode: ``text`` (text tower only; the image tower is dropped after loading) or ``late``
            (text embedding ‖ image embedding, ``out_dim = 2 * embed_dim``).
        checkpoint: an open_clip-format state dict file (``open_clip_pytorch_model.bin`` or
            ``.safetensors`` of the hub release), loaded with ``strict=True``.
    """

    MODES = ("text", "late")

    def __init__(self, model: str = "ViT-L-14", mode: str = "late", checkpoint: str | None = None):
        super().__init__()
        from open_clip.model import CLIP

        self.mode = self.check_mode(mode)
        self.model_name = model
        cfg = clip_config(model)
        self.context_length = cfg["text_cfg"].get("context_length", 77)
        self.image_size = cfg["vision_cfg"].get("image_size", 224)
        state = select_prefix(load_state_dict(checkpoint), CHECKPOINT_PREFIXES) if checkpoint else None
        self.clip = CLIP(**cfg)
        if state is not None:
            load_into(self.clip, state, checkpoint)
        if mode == "text":
            self.clip.visual = None  # never run: frees the 300M-630M image-tower parameters
        embed_dim = cfg["embed_dim"]
        self.out_dim = embed_dim * (2 if mode == "late" else 1)
        self.requires_grad_(True)  # logit_scale (contrastive loss only) stays frozen

    @property
    def image_view(self) -> StretchView:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        # A square stretch instead of open_clip's resize + centre crop: the referred object may
        # sit at the image border, which a crop would cut away.
        return StretchView(self.image_size, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))

    @cached_property
    def tokenizer(self) -> ClipTokenizer:
        return ClipTokenizer(self.model_name, self.context_length)

    def uses_parameter(self, name: str) -> bool:
        return not name.startswith(("clip.logit_scale", "clip.logit_bias"))  # contrastive-loss scalars

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """images ``[B,3,S,S]``, input_ids ``[B,77]`` -> ``[B, out_dim]`` (un-normalised projected embeddings).

        ``padding_mask`` is not needed: the text tower is causal and pools at the end-of-text
        token, so trailing padding never reaches the feature.
        """
        if input_ids.shape[1] != self.context_length:
            raise ValueError(f"CLIP expects {self.context_length} token ids per text, got {input_ids.shape[1]}")
        text = self.clip.encode_text(input_ids)
        if self.mode == "text":
            return text
        return torch.cat([text, self.clip.encode_image(images)], dim=-1)
