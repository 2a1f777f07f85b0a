"""EfficientSAM (Xiong et al. 2023) as plain modules whose state-dict keys are those of the official
release (yformer/EfficientSAM ``efficient_sam_vit{t,s}.pt``, ``model`` dict), so its weights load
with ``strict=True``. No maintained package ships this model (``efficientsam`` on PyPI is EfficientViT-SAM).

What differs from SAM-1: a plain ViT image encoder (global attention, absolute positions learnt at 224 px
and resized bicubically), a prompt encoder with no dense/mask branch, and a mask decoder whose
upscaling and MLP heads are named differently. segment-anything's two-way transformer and random
Fourier position encoding compute exactly the same thing and are reused.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


class MLPBlock(nn.Module):
    """``num_layers`` x (Linear, act) then a Linear ``fc``: keys ``layers.{i}.0.*`` and ``fc.*``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.GELU()) for a, b in itertools.pairwise(dims))
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


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
        from segment_anything.modeling.common import LayerNorm2d

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


class PromptEncoder(nn.Module):
    """Point/box embeddings (unused by text prompts, kept for the checkpoint) and the dense position encoding."""

    def __init__(self, dim: int, embedding_size: int, img_size: int):
        super().__init__()
        from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

        self.embed_dim = dim
        self.image_embedding_size = (embedding_size, embedding_size)
        self.input_image_size = (img_size, img_size)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.invalid_points = nn.Embedding(1, dim)
        self.point_embeddings = nn.Embedding(1, dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, dim)

    def get_dense_pe(self) -> torch.Tensor:
        return self.pe_layer(self.image_embedding_size)[None]


class MaskDecoder(nn.Module):
    """Tokens ``[iou, 4 masks, prompts]`` through the two-way transformer -> masks ``[N, 4, 4h, 4w]``, IoU ``[N, 4]``."""

    def __init__(self, cfg: EfficientSamConfig, num_mask_tokens: int = 4):
        super().__init__()
        from segment_anything.modeling.transformer import TwoWayTransformer

        dim = cfg.neck_dim
        self.transformer = TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=dim,
                                             num_heads=cfg.decoder_heads, mlp_dim=cfg.decoder_mlp_dim)
        for block in self.transformer.layers:  # same maths, EfficientSAM's parameter names and GELU
            block.mlp = MLPBlock(dim, cfg.decoder_mlp_dim, dim, num_layers=1)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        layers, width = [], dim
        for i, out in enumerate(cfg.upscaling_dims):
            norm = nn.GroupNorm(1, out) if i < len(cfg.upscaling_dims) - 1 else nn.Identity()
            layers.append(nn.Sequential(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2), norm, nn.GELU()))
            width = out
        self.final_output_upscaling_layers = nn.ModuleList(layers)
        self.output_hypernetworks_mlps = nn.ModuleList(MLPBlock(dim, dim, width, 2) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLPBlock(dim, cfg.iou_head_hidden_dim, num_mask_tokens, 2)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings ``[N, C, h, w]`` (one per prompt set), sparse ``[N, P, C]``."""
        n = len(sparse_prompt_embeddings)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(n, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)
        b, c, h, w = image_embeddings.shape
        hs, src = self.transformer(image_embeddings, image_pe.expand(n, -1, -1, -1), tokens)
        x = src.transpose(1, 2).reshape(b, c, h, w)
        for layer in self.final_output_upscaling_layers:
            x = layer(x)
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ x.flatten(2)).reshape(b, -1, *x.shape[-2:])
        return masks, self.iou_prediction_head(hs[:, 0])


class EfficientSam(nn.Module):
    """Top level with the official children: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

    def __init__(self, cfg: EfficientSamConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoderViT(cfg)
        self.prompt_encoder = PromptEncoder(cfg.neck_dim, cfg.img_size // cfg.patch_size, cfg.img_size)
        self.mask_decoder = MaskDecoder(cfg)
