"""EfficientSAM (Xiong et al. 2023) as plain modules whose state-dict keys are those of the official
release (yformer/EfficientSAM ``efficient_sam_vit{t,s}.pt``, ``model`` dict), so its weights load
with ``strict=True``. No maintained package ships this model (``efficientsam`` on PyPI is EfficientViT-SAM).

What differs from SAM-1: a plain ViT image encoder (global attention, absolute positions learnt at 224 px
and resized bicubically), a prompt encoder with no dense/mask branch, and a mask decoder with its own
two-way transformer (``evf.sam.efficientsam_decoder``). Checked number for number against the official
code by ``tests/test_efficientsam_parity.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evf.sam.efficientsam_decoder import MaskDecoder, PromptEncoder


@dataclass(frozen=True)
class EfficientSamConfig:
    img_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 384
    encoder_depth: int = 12
    encoder_heads: int = 6
    neck_dim: int = 256  # = prompt / transformer width
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    upscaling_dims: tuple[int, ...] = (64, 32)
    iou_head_hidden_dim: int = 256
    pretrain_img_size: int = 224  # the absolute position table is stored at this resolution


CONFIGS = {
    "ti": EfficientSamConfig(encoder_dim=192, encoder_heads=3),
    "s": EfficientSamConfig(encoder_dim=384, encoder_heads=6),
    "toy": EfficientSamConfig(img_size=128, encoder_dim=32, encoder_depth=2, encoder_heads=2, neck_dim=32,
                              decoder_mlp_dim=64, decoder_heads=2, upscaling_dims=(16, 8), iou_head_hidden_dim=32),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]`` (eps 1e-6, as the official neck)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        x = centred / torch.sqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.num_heads) ** -0.5
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """``[B, 3, S, S]`` -> ``[B, neck_dim, S/16, S/16]``."""

    def __init__(self, cfg: EfficientSamConfig):
        super().__init__()
        self.img_size = cfg.img_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.encoder_dim)
        pretrain_grid = cfg.pretrain_img_size // cfg.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid**2 + 1, cfg.encoder_dim))  # + unused CLS slot
        self.blocks = nn.ModuleList(Block(cfg.encoder_dim, cfg.encoder_heads) for _ in range(cfg.encoder_depth))
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.encoder_dim, cfg.neck_dim, kernel_size=1, bias=False), LayerNorm2d(cfg.neck_dim),
            nn.Conv2d(cfg.neck_dim, cfg.neck_dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(cfg.neck_dim),
        )

    def position_table(self, h: int, w: int) -> torch.Tensor:
        table = self.pos_embed[:, 1:]
        size = math.isqrt(table.shape[1])
        table = table.reshape(1, size, size, -1)
        if (size, size) != (h, w):
            table = F.interpolate(table.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
            table = table.permute(0, 2, 3, 1)
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"EfficientSAM expects {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x).permute(0, 2, 3, 1)  # [B, h, w, C]
        b, h, w, c = x.shape
        x = (x + self.position_table(h, w)).reshape(b, h * w, c)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.reshape(b, h, w, c).permute(0, 3, 1, 2))


class EfficientSam(nn.Module):
    """Top level with the official children: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

    def __init__(self, cfg: EfficientSamConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoderViT(cfg)
        self.prompt_encoder = PromptEncoder(cfg.neck_dim, cfg.img_size // cfg.patch_size, cfg.img_size)
        self.mask_decoder = MaskDecoder(cfg.neck_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_dim,
                                        cfg.upscaling_dims, cfg.iou_head_hidden_dim)
