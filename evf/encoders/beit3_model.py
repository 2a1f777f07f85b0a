"""BEiT-3 multiway transformer, written to match the torchscale state-dict layout.

The official EVF-SAM weights load into ``Beit3Model`` with ``strict=True``: every child name
below mirrors a key group of ../shared/spec/official-checkpoint-format.md §2.
Token order is always [image tokens (CLS first), text tokens]; branch ``A`` serves the image
tokens and branch ``B`` the text tokens, attention is joint over both.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from evf.config_errors import ConfigError

# Fairseq convention: positions 0 and 1 are reserved, both modalities start counting at 2.
POSITION_OFFSET = 2


@dataclass(frozen=True)
class Beit3Config:
    dim: int = 1024
    depth: int = 24
    heads: int = 16
    ffn_dim: int = 4096
    img_size: int = 224
    patch_size: int = 16
    vocab_size: int = 64010
    max_text_positions: int = 1024
    layer_norm_eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_image_tokens(self) -> int:
        return self.num_patches + 1

    @property
    def max_text_tokens(self) -> int:
        """Longest text (``<s>`` and ``</s>`` included) the position table embeds: 1022 for base/large."""
        return self.max_text_positions - POSITION_OFFSET


BEIT3_CONFIGS = {
    "large": Beit3Config(),
    "base": Beit3Config(dim=768, depth=12, heads=12, ffn_dim=3072),
    # Test-sized: same code paths, a few hundred thousand parameters.
    "tiny": Beit3Config(dim=32, depth=2, heads=2, ffn_dim=64, img_size=32, patch_size=8,
                        vocab_size=512, max_text_positions=64),
    # Fusion-study exploration (studies/fusion/exploration.py): twice the depth, width and resolution (8x8 patches) of tiny.
    "mini": Beit3Config(dim=64, depth=4, heads=4, ffn_dim=128, img_size=64, patch_size=8,
                        vocab_size=512, max_text_positions=64),
}


def beit3_config(size: str, **overrides) -> Beit3Config:
    if size not in BEIT3_CONFIGS:
        raise ConfigError(f"unknown BEiT-3 size {size!r}; choose from {sorted(BEIT3_CONFIGS)}")
    return replace(BEIT3_CONFIGS[size], **overrides)


class Multiway(nn.Module):
    """Two copies of a module; tokens before ``split`` go through A (image), the rest through B (text)."""

    def __init__(self, make: callable):
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        if split >= x.shape[1]:
            return self.A(x)
        if split <= 0:
            return self.B(x)
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)


class FeedForward(nn.Module):
    """Sub-LN FFN: fc1 -> GELU (fp32, exact erf) -> LayerNorm over the hidden width -> fc2."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x).float()).type_as(x)
        return self.fc2(self.ffn_layernorm(h))


class MultiwaySelfAttention(nn.Module):
    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.heads = cfg.heads
        linear = lambda: nn.Linear(cfg.dim, cfg.dim)
        self.q_proj = Multiway(linear)
        self.k_proj = Multiway(linear)
        self.v_proj = Multiway(linear)
        self.out_proj = Multiway(linear)
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def query_key(self, x: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries and keys ``[B, H, N, d]``; shared with attention-map inspection."""
        return self.split_heads(self.q_proj(x, split)), self.split_heads(self.k_proj(x, split))

    def forward(self, x: torch.Tensor, split: int, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        q, k = self.query_key(x, split)
        v = self.split_heads(self.v_proj(x, split))
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # True = may attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(x.shape)
        return self.out_proj(self.inner_attn_ln(out, split), split)


class Beit3Layer(nn.Module):
    def __init__(self, cfg: Beit3Config):
        super().__init__()
        ln = lambda: nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.self_attn = MultiwaySelfAttention(cfg)
        self.self_attn_layer_norm = Multiway(ln)
        self.ffn = Multiway(lambda: FeedForward(cfg.dim, cfg.ffn_dim, cfg.layer_norm_eps))
        self.final_layer_norm = Multiway(ln)

    def forward(self, x: torch.Tensor, split: int, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x, split), split, key_padding_mask)
        return x + self.ffn(self.final_layer_norm(x, split), split)


class VisionEmbedding(nn.Module):
    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))  # only for BEiT pre-training; kept for the key schema

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class MultiwayPositions(nn.Module):
    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.A = nn.Embedding(cfg.num_image_tokens + POSITION_OFFSET, cfg.dim)
        self.B = nn.Embedding(cfg.max_text_positions, cfg.dim)

    def forward(self, num_image: int, num_text: int) -> torch.Tensor:
        device = self.A.weight.device
        parts = []
        if num_image:
            parts.append(self.A(torch.arange(num_image, device=device) + POSITION_OFFSET))
        if num_text:
            parts.append(self.B(torch.arange(num_text, device=device) + POSITION_OFFSET))
        return torch.cat(parts, dim=0)


class Beit3LayerStack(nn.Module):
    """Positions, the multiway layers and the final LayerNorm; held as ``Beit3Model.encoder`` because the
    official checkpoints name its weights ``beit3.encoder.*``."""

    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.embed_positions = MultiwayPositions(cfg)
        self.layers = nn.ModuleList(Beit3Layer(cfg) for _ in range(cfg.depth))
        self.layer_norm = Multiway(lambda: nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps))


class Beit3Model(nn.Module):
    """``forward`` returns ``encoder_out`` ``[B, N_img + L, D]`` after the final multiway LayerNorm."""

    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.cfg = cfg
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.vision_embed = VisionEmbedding(cfg)
        self.encoder = Beit3LayerStack(cfg)

    def embed(self, images: torch.Tensor | None, input_ids: torch.Tensor | None,
              text_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """Token + position embeddings with padded text positions zeroed; returns (x, split, key padding)."""
        tokens, pads = [], []
        split = 0
        if images is not None:
            img = self.vision_embed(images)
            split = img.shape[1]
            tokens.append(img)
            pads.append(torch.zeros(img.shape[:2], dtype=torch.bool, device=img.device))
        if input_ids is not None:
            tokens.append(self.text_embed(input_ids))
            if text_padding_mask is None:
                text_padding_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            pads.append(text_padding_mask)
        x = torch.cat(tokens, dim=1)
        num_text = x.shape[1] - split
        if num_text > self.cfg.max_text_tokens:
            raise ValueError(f"text of {num_text} tokens exceeds BEiT-3's {self.cfg.max_text_tokens} positions")
        x = x + self.encoder.embed_positions(split, num_text).to(x.dtype)
        padding = torch.cat(pads, dim=1)
        x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        return x, split, padding if padding.any() else None

    def forward(self, images: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                text_padding_mask: torch.Tensor | None = None, depth: int | None = None) -> torch.Tensor:
        """images ``[B,3,S,S]``; input_ids ``[B,L]``; text_padding_mask ``[B,L]`` True at padding.

        ``depth`` runs only the first k layers (then the final LayerNorm), as in the paper's
        "Early L1-L12" row.
        """
        if images is None and input_ids is None:
            raise ValueError("BEiT-3 needs an image, a text or both")
        x, split, padding = self.embed(images, input_ids, text_padding_mask)
        for layer in self.encoder.layers[: depth or len(self.encoder.layers)]:
            x = layer(x, split, padding)
        return self.encoder.layer_norm(x, split)
