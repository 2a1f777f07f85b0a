"""What a training checkpoint leaves out (frozen weights) and what it adds (RNG states for exact resume)."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn


def frozen_state_keys(module: nn.Module) -> set[str]:
    """State-dict keys that an optimizer never changes: frozen parameters, and every entry (buffers
    included) under a submodule whose parameters are all frozen, e.g. the SAM image encoder."""
    trainable_under: dict[str, bool] = {}
    frozen = set()
    for name, param in module.named_parameters():
        if not param.requires_grad:
            frozen.add(name)
        parts = name.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            trainable_under[prefix] = trainable_under.get(prefix, False) or param.requires_grad
    frozen_prefixes = {p + "." for p, trainable in trainable_under.items() if not trainable}
    for key in module.state_dict(keep_vars=True):
        parts = key.split(".")
        if any(".".join(parts[:d]) + "." in frozen_prefixes for d in range(1, len(parts))):
            frozen.add(key)
    return frozen


def drop_frozen(state: dict[str, Any], frozen: set[str]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in frozen}


def fill_frozen(state: dict[str, Any], current: dict[str, torch.Tensor], frozen: set[str]) -> list[str]:
    """Add the frozen entries a checkpoint left out, taken from the freshly built model (whose
    constructor loaded them from their own checkpoint files). Returns the keys filled in; anything
    else missing stays missing, so a strict load still fails on a genuinely absent trainable weight."""
    filled = [k for k in frozen if k not in state and k in current]
    for key in filled:
        state[key] = current[key]
    return filled


def rng_states() -> dict[str, Any]:
    """Global RNG states as tensors and plain Python values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
