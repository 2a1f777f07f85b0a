"""BEiT-3 attention maps for inspection (paper Fig.8): which image patches a query token attends to.

For each layer the encoder runs, the attention of one query token (the image ``[CLS]`` or a text
token) over the image patches is summed over heads and laid out on the patch grid ``[gh, gw]``.
Probabilities come from the layer's own ``query_key`` with an explicit softmax over *all* keys
(image and unpadded text), so in early fusion the patch weights sum to less than the number of
heads: the rest of the mass went to text tokens. The model's forward path is untouched.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evf.config_errors import ConfigError
from evf.io import atomic_path, save_png_atomic
from evf.predictor import placement

IMAGE_CLS = "image_cls"


def parse_query(query: str) -> int | None:
    """``image_cls`` -> None; ``text:<i>`` -> i (index among the text tokens, 0 = ``<s>``)."""
    if query == IMAGE_CLS:
        return None
    if query.startswith("text:") and query[5:].isdigit():
        return int(query[5:])
    raise ConfigError(f"query must be 'image_cls' or 'text:<index>', got {query!r}")


def check_beit3(encoder) -> None:
    if not hasattr(encoder, "beit3"):
        raise ConfigError(f"attention maps need a BEiT-3 encoder, got {type(encoder).__name__}")


@torch.no_grad()
def layer_attention(encoder, images: torch.Tensor | None, input_ids: torch.Tensor | None = None,
                    padding_mask: torch.Tensor | None = None, layers: list[int] | None = None) -> list[torch.Tensor]:
    """Full attention probabilities ``[B, H, N, N]`` (rows = queries, softmax over keys) per requested layer.

    Token order is [image CLS, patches, text]. ``layers`` are 1-based layer numbers (paper: L1..L24);
    default: every layer the encoder runs (its ``depth``). Pass ``images=None`` for text-only input
    or ``input_ids=None`` for image-only input.
    """
    check_beit3(encoder)
    beit3 = encoder.beit3
    depth = getattr(encoder, "depth", None) or len(beit3.encoder.layers)
    wanted = list(range(1, depth + 1)) if layers is None else [int(n) for n in layers]
    bad = [n for n in wanted if not 1 <= n <= depth]
    if bad:
        raise ConfigError(f"layers must be within 1..{depth} (the layers this encoder runs), got {bad}")
    x, split, padding = beit3.embed(images, input_ids, padding_mask)
    out = []
    for number, layer in enumerate(beit3.encoder.layers[: max(wanted)], start=1):
        if number in wanted:
            q, k = layer.self_attn.query_key(layer.self_attn_layer_norm(x, split), split)
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if padding is not None:
                scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
            out.append(scores.float().softmax(dim=-1))
        x = layer(x, split, padding)
    return out


@torch.no_grad()
def patch_attention(encoder, images: torch.Tensor, input_ids: torch.Tensor | None = None,
                    padding_mask: torch.Tensor | None = None, query: str = IMAGE_CLS,
                    layers: list[int] | None = None) -> torch.Tensor:
    """Attention from ``query`` to the image patches, summed over heads: ``[B, layers, gh, gw]``.

    images ``[B, 3, S, S]`` (the encoder's image view); input_ids / padding_mask ``[B, L]`` or None
    (image-only input, e.g. the image branch of late fusion).
    """
    check_beit3(encoder)
    cfg = encoder.beit3.cfg
    text_index = parse_query(query)
    n_img = cfg.num_image_tokens
    if text_index is None:
        row = 0
    else:
        if input_ids is None:
            raise ValueError("a text query needs text input")
        length = input_ids.shape[1] if padding_mask is None else int((~padding_mask).sum(1).min())
        if text_index >= length:
            raise ConfigError(f"text token {text_index} out of range: the prompt has {length} tokens")
        row = n_img + text_index
    grid = cfg.img_size // cfg.patch_size
    maps = [p[:, :, row, 1:n_img].sum(dim=1) for p in layer_attention(encoder, images, input_ids, padding_mask, layers)]
    return torch.stack(maps, dim=1).reshape(images.shape[0], len(maps), grid, grid)


def attention_maps(model, image: np.ndarray, prompt: str | None, query: str = IMAGE_CLS,
                   layers: list[int] | None = None) -> np.ndarray:
    """One RGB ``uint8 [H, W, 3]`` image and prompt through an ``EVFSAM``'s BEiT-3 -> ``float32 [layers, gh, gw]``.

    Uses the encoder's own image view and tokenizer. ``prompt=None`` gives image-only maps, and so
    does a late-fusion encoder (its image branch never sees the text).
    """
    encoder = model.encoder if hasattr(model, "encoder") else model
    check_beit3(encoder)
    mode = getattr(encoder, "mode", "early")
    if mode == "text":
        raise ConfigError("a text-only encoder never sees the image: there is no attention to image patches")
    if mode == "late":  # the image branch runs alone, so the prompt cannot reach it
        if query != IMAGE_CLS:
            raise ConfigError("in late fusion text tokens never attend to image patches; use --query image_cls")
        prompt = None
    device, dtype = placement(encoder)
    images = encoder.image_view(image)[None].to(device, dtype)
    ids = mask = None
    if prompt is not None:
        tokens = encoder.tokenizer([prompt])
        ids, mask = tokens["input_ids"].to(device), tokens["padding_mask"].to(device)
    was_training = encoder.training
    encoder.eval()
    try:
        return patch_attention(encoder, images, ids, mask, query, layers)[0].cpu().numpy().astype(np.float32)
    finally:
        encoder.train(was_training)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend one ``[gh, gw]`` map (min-max normalised, bilinearly resized) over ``uint8 [H, W, 3]``."""
    from matplotlib import colormaps

    h, w = image.shape[:2]
    heat = torch.as_tensor(heat, dtype=torch.float32)[None, None]
    heat = F.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colours = colormaps[colormap](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def save_heatmaps(image: np.ndarray, maps: np.ndarray, out_dir: str | os.PathLike,
                  layers: list[int] | None = None, prefix: str = "layer") -> list[Path]:
    """Write ``{prefix}{NN}.png`` (one overlay per layer, atomically) and ``attention.npy``; returns the PNG paths."""
    out_dir = Path(out_dir)
    numbers = layers if layers is not None else list(range(1, len(maps) + 1))
    if len(numbers) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(numbers)} layer numbers")
    paths = []
    for number, heat in zip(numbers, maps):
        path = out_dir / f"{prefix}{number:02d}.png"
        save_png_atomic(path, overlay(image, heat))
        paths.append(path)
    with atomic_path(out_dir / "attention.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(maps, dtype=np.float32))  # noqa: TID251 - into atomic_path's temporary
    return paths
