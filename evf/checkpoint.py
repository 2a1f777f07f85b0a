"""The one checkpoint reader: safetensors or torch files, always ``weights_only=True``."""
from __future__ import annotations

import os
from pathlib import Path

import torch

WRAPPER_KEYS = ("state_dict", "model", "module")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


def read_checkpoint(path: str | os.PathLike) -> object:
    """The file's raw content (a Lightning checkpoint stays a dict with its optimizer/RNG entries)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (corrupt, truncated, or a pickle with forbidden globals)
        lines = str(exc).strip().splitlines()
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {lines[0][:200] if lines else ''}") from None


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    obj = read_checkpoint(path)
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return obj


def select_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys under the first of ``prefixes`` present in ``state``, with that prefix removed ('' = keep all)."""
    for prefix in prefixes:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return {}


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``strict=True`` load with a one-line error naming the source and the first mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
