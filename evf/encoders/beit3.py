"""BEiT-3 as a multimodal-encoder plugin: text-only, late concat, or early fusion (paper Tab.4/Tab.12)."""
from __future__ import annotations

from functools import cached_property

import torch

from evf.checkpoint import load_into, load_state_dict, select_prefix
from evf.config_errors import ConfigError
from evf.encoders.base import ENCODERS, MultimodalEncoder
from evf.encoders.beit3_model import Beit3Model, beit3_config
from evf.tokenizer import XlmrTokenizer, toy_tokenizer_dir
from evf.transforms import StretchView

# Which features each mode can produce; the first is the default (paper: image [CLS] for early fusion).
FEATURES = {
    "early": ("image_cls", "text_cls", "image_avg", "concat_cls"),
    "late": ("concat_cls",),
    "text": ("text_cls",),
}
CHECKPOINT_PREFIXES = ("mm_extractor.beit3.", "beit3.", "")


@ENCODERS.register("beit3", tiny={"size": "tiny"})
class Beit3Encoder(MultimodalEncoder):
    """Our BEiT-3 (``size``: tiny / base / large).

    Args:
        mode: ``early`` (image and text tokens attend jointly), ``late`` (each encoded alone,
            CLS tokens concatenated) or ``text`` (text alone).
        feature: ``image_cls``, ``text_cls``, ``image_avg`` (mean of the patch tokens) or
            ``concat_cls`` (image CLS ‖ text CLS); default depends on the mode.
        depth: run only the first ``depth`` layers (paper "Early L1-L12"); ``None`` = all.
        tokenizer: folder or file of BEiT-3's sentencepiece model; ``None`` = built-in toy tokenizer.
            A folder's own files decide the added tokens (``[semantic]``), see ``XlmrTokenizer``.
        max_text_length: cut longer prompts (with a warning); ``None`` = all the text positions the
            model has (1022 for base/large, as the official code); larger values are lowered to that.
        checkpoint: BEiT-3 weights (official BEiT-3 or EVF-SAM file), loaded with ``strict=True``.
    """

    FEATURES = FEATURES
    has_joint_pass = True

    def __init__(self, size: str = "large", mode: str = "early", feature: str | None = None,
                 depth: int | None = None, tokenizer: str | None = None, max_text_length: int | None = None,
                 checkpoint: str | None = None):
        super().__init__()
        self.mode = self.check_mode(mode)
        self.feature = feature or FEATURES[mode][0]
        if self.feature not in FEATURES[mode]:
            raise ConfigError(f"feature {self.feature!r} is not available in {mode!r} mode; choose from {FEATURES[mode]}")
        self.cfg = beit3_config(size)
        if depth is not None and not 1 <= depth <= self.cfg.depth:
            raise ConfigError(f"depth must be within 1..{self.cfg.depth}, got {depth}")
        self.depth = depth
        self.tokenizer_path = tokenizer
        # Never tokenize past what the text position table embeds (it counts from row 2).
        limit = self.cfg.max_text_tokens
        self.max_text_length = limit if max_text_length is None else min(max_text_length, limit)
        self.beit3 = Beit3Model(self.cfg)
        self.out_dim = self.cfg.dim * (2 if self.feature == "concat_cls" else 1)
        if checkpoint:
            load_into(self.beit3, select_prefix(load_state_dict(checkpoint), CHECKPOINT_PREFIXES), checkpoint)
        self.requires_grad_(True)  # what this mode/depth never runs (mask_token, unused layers/branch) stays frozen

    @property
    def image_view(self) -> StretchView:
        return StretchView(self.cfg.img_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @cached_property
    def tokenizer(self) -> XlmrTokenizer:
        tok = XlmrTokenizer(self.tokenizer_path or toy_tokenizer_dir(), max_length=self.max_text_length)
        if len(tok) > self.cfg.vocab_size:
            raise ConfigError(f"tokenizer has {len(tok)} tokens but BEiT-3 '{self.cfg}' embeds only {self.cfg.vocab_size}")
        return tok

    def uses_parameter(self, name: str) -> bool:
        parts = name.split(".")
        if parts[-1] == "mask_token":  # BEiT pre-training only
            return False
        if "layers" in parts and int(parts[parts.index("layers") + 1]) >= (self.depth or self.cfg.depth):
            return False
        image_side = "vision_embed" in parts or "A" in parts  # multiway branch A serves image tokens
        return self.uses_image or not image_side

    # -- joint pass hooks (pre-training objectives) ---------------------------------------------
    def joint_tokens(self, images: torch.Tensor, input_ids: torch.Tensor,
                     padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text token outputs, image [CLS]: the token EVF-SAM prompts with) of one early-fusion pass."""
        out = self.encode(images, input_ids, padding_mask)
        return out[:, self.cfg.num_image_tokens:], out[:, 0]

    @property
    def hidden_size(self) -> int:
        return self.cfg.dim

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def mask_token_id(self) -> int:
        """The first embedding row the tokenizer never emits (BEiT-3's sentencepiece vocabulary has no [MASK])."""
        mask_id = len(self.tokenizer)
        if mask_id >= self.cfg.vocab_size:
            raise ConfigError(f"no free embedding row for [MASK]: tokenizer has {mask_id} of {self.cfg.vocab_size}")
        return mask_id

    def encode(self, images=None, input_ids=None, padding_mask=None) -> torch.Tensor:
        return self.beit3(images, input_ids, padding_mask, depth=self.depth)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "text":
            return self.encode(input_ids=input_ids, padding_mask=padding_mask)[:, 0]
        if self.mode == "late":
            image_cls = self.encode(images=images)[:, 0]
            text_cls = self.encode(input_ids=input_ids, padding_mask=padding_mask)[:, 0]
            return torch.cat([image_cls, text_cls], dim=-1)
        out = self.encode(images, input_ids, padding_mask)
        n_img = self.cfg.num_image_tokens
        if self.feature == "image_cls":
            return out[:, 0]
        if self.feature == "text_cls":
            return out[:, n_img]
        if self.feature == "image_avg":
            return out[:, 1:n_img].mean(dim=1)
        return torch.cat([out[:, 0], out[:, n_img]], dim=-1)
