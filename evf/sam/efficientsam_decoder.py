"""EfficientSAM's prompt encoder and mask decoder, with the state-dict keys of the official release.

The decoder looks like SAM-1's but computes something else in the two-way transformer's self-attention
(see ``TwoWayAttentionBlock``), uses GELU in every MLP (SAM-1: ReLU in its heads), multiplies attention
logits by 1/sqrt(head width) (SAM-1 divides; a last-bit difference) and upscales with GroupNorm(1, C).
So segment-anything's modules are not reused here.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class MLPBlock(nn.Module):
    """``num_layers`` x (Linear, GELU) then a Linear ``fc``: keys ``layers.{i}.0.*`` and ``fc.*``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.GELU()) for a, b in itertools.pairwise(dims))
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


class RandomFourierPositions(nn.Module):
    """Dense position encoding of the embedding grid: pixel centres in [0, 1], mapped to [-1, 1], projected by a
    fixed Gaussian matrix ``[2, C/2]`` (x row first), then ``[sin, cos]`` of 2*pi times that -> ``[C, h, w]``."""

    def __init__(self, num_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        m = self.positional_encoding_gaussian_matrix
        ys = ((torch.arange(h, device=m.device).to(m.dtype) + 0.5) / h)[:, None].expand(h, w)
        xs = ((torch.arange(w, device=m.device).to(m.dtype) + 0.5) / w)[None, :].expand(h, w)
        angles = (2 * math.pi) * ((2 * torch.stack([xs, ys], dim=-1) - 1) @ m)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Point/box embeddings (unused by text prompts, kept for the checkpoint) and the dense position encoding."""

    def __init__(self, dim: int, embedding_size: int, img_size: int):
        super().__init__()
        self.embed_dim = dim
        self.image_embedding_size = (embedding_size, embedding_size)
        self.input_image_size = (img_size, img_size)
        self.pe_layer = RandomFourierPositions(dim // 2)
        self.invalid_points = nn.Embedding(1, dim)
        self.point_embeddings = nn.Embedding(1, dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, dim)

    def get_dense_pe(self) -> torch.Tensor:
        """``[1, C, h, w]``."""
        return self.pe_layer(self.image_embedding_size)[None]


class ProjectedAttention(nn.Module):
    """Multi-head attention whose projections may narrow the width to ``dim // downsample_rate``.
    Keys ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``. Inputs ``[B, N, dim]``."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {inner}")
        self.num_heads = num_heads
        self.scale = 1.0 / math.sqrt(inner / num_heads)  # multiplied into the logits, as the official code does
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # [B, heads, N, c/heads]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(self.q_proj(q)), self.split_heads(self.k_proj(k)), self.split_heads(self.v_proj(v))
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image, token MLP, image -> tokens; post-norm residuals.

    Where EfficientSAM differs from SAM-1 (both in the self-attention step):
    * after the first layer the prompt PE is added to the tokens themselves, so the sum is query, key,
      value AND the residual (SAM-1 adds it to query/key only);
    * in the first layer (no PE) the attention output is still added to the tokens (SAM-1 replaces them).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, first: bool, downsample_rate: int = 2):
        super().__init__()
        self.first = first
        self.self_attn = ProjectedAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = ProjectedAttention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dim, num_layers=1)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = ProjectedAttention(dim, num_heads, downsample_rate)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, token_pe: torch.Tensor,
                image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.first:
            tokens = tokens + token_pe
        tokens = self.norm1(tokens + self.self_attn(tokens, tokens, tokens))
        image_with_pe = image + image_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image_with_pe, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(image_with_pe, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """``depth`` blocks, then a last tokens -> image attention and LayerNorm.

    image ``[B, C, h, w]``, image_pe ``[B or 1, C, h, w]``, tokens ``[B, T, C]`` ->
    (tokens ``[B, T, C]``, image ``[B, h*w, C]``).
    """

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayAttentionBlock(dim, num_heads, mlp_dim, first=i == 0, downsample_rate=downsample_rate)
                                    for i in range(depth))
        self.final_attn_token_to_image = ProjectedAttention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, image_pe = image.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2)
        token_pe, queries = tokens, tokens  # the input tokens are their own position encoding
        for layer in self.layers:
            queries, image = layer(queries, image, token_pe, image_pe)
        queries = queries + self.final_attn_token_to_image(queries + token_pe, image + image_pe, image)
        return self.norm_final_attn(queries), image


class MaskDecoder(nn.Module):
    """Tokens ``[iou, 4 masks, prompts]`` through the two-way transformer -> masks ``[N, 4, 4h, 4w]``, IoU ``[N, 4]``.
    Token 0 is the official ``multimask_output=False`` output, tokens 1-3 the multimask ones."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, upscaling_dims: tuple[int, ...],
                 iou_head_hidden_dim: int, num_mask_tokens: int = 4):
        super().__init__()
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        layers, width = [], dim
        for i, out in enumerate(upscaling_dims):  # ConvT 2x -> GroupNorm(1) except after the last -> GELU
            norm = nn.GroupNorm(1, out) if i < len(upscaling_dims) - 1 else nn.Identity()
            layers.append(nn.Sequential(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2), norm, nn.GELU()))
            width = out
        self.final_output_upscaling_layers = nn.ModuleList(layers)
        self.output_hypernetworks_mlps = nn.ModuleList(MLPBlock(dim, dim, width, 2) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLPBlock(dim, iou_head_hidden_dim, num_mask_tokens, 2)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings ``[N, C, h, w]`` (one per prompt set), image_pe ``[1, C, h, w]``, sparse ``[N, P, C]``."""
        n = sparse_prompt_embeddings.shape[0]  # not len(): a traced ONNX export keeps .shape dynamic
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(n, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)
        b, c, h, w = image_embeddings.shape
        hs, image = self.transformer(image_embeddings, image_pe, tokens)
        x = image.transpose(1, 2).reshape(b, c, h, w)
        for layer in self.final_output_upscaling_layers:
            x = layer(x)
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ x.flatten(2)).reshape(b, -1, *x.shape[-2:])
        return masks, self.iou_prediction_head(hs[:, 0])
