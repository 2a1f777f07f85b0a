"""The one checkpoint reader (and safetensors writer): safetensors or torch files, always ``weights_only=True``.

``iter_tensors`` hands a state dict out one tensor at a time, so a loader that converts or moves
each tensor as it arrives never holds the file's copy and the model's copy of all weights at once.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

WRAPPER_KEYS = ("state_dict", "model", "module")
# safetensors dtype names (the format's spec) -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
CHUNK_BYTES = 8 << 20  # read-and-convert slice: small enough to stay in cache, large enough to amortise the calls


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


def unreadable(path: Path, exc: Exception) -> CheckpointError:
    lines = str(exc).strip().splitlines()
    return CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {lines[0][:200] if lines else ''}")


def safetensors_header(path: Path) -> tuple[dict, int]:
    """``({name: {dtype, shape, data_offsets}}, offset of the data block)``, checked against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        numel = torch.Size(info["shape"]).numel()
        if end - begin != numel * dtype.itemsize or not 0 <= begin <= end <= size - 8 - length:
            raise ValueError(f"tensor {name!r}: data_offsets {info['data_offsets']} do not fit its shape or the file")
    return header, 8 + length


def iter_safetensors(path: Path, dtype: torch.dtype | None = None,
                     device: torch.device | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor read by plain file reads, straight into its final tensor when the file's dtype is
    the wanted one, else through one small reused buffer that is converted slice by slice (``dtype``
    applies to floating tensors). No memory map: its touched pages would count in the process's RSS for
    as long as any tensor of the file is alive, and no second copy of a tensor is ever made."""
    header, data_start = safetensors_header(path)
    device = torch.device(device or "cpu")
    staging = {}  # file dtype -> reused read buffer
    with open(path, "rb") as f:
        for name, info in header.items():
            stored = SAFETENSORS_DTYPES[info["dtype"]]
            out = torch.empty(info["shape"], dtype=dtype if dtype is not None and stored.is_floating_point else stored,
                              device=device)
            f.seek(data_start + info["data_offsets"][0])
            if out.dtype == stored and device.type == "cpu":
                read_exactly(f, out.view(-1), name)
            else:
                step = CHUNK_BYTES // stored.itemsize
                buffer = staging.setdefault(stored, torch.empty(step, dtype=stored))
                for start in range(0, out.numel(), step):
                    part = buffer[: min(step, out.numel() - start)]
                    read_exactly(f, part, name)
                    out.view(-1)[start:start + len(part)].copy_(part)
            yield name, out


def read_exactly(f, flat: torch.Tensor, name: str) -> None:
    if flat.numel():
        view = memoryview(flat.view(torch.uint8).numpy())
        if f.readinto(view) != len(view):
            raise ValueError(f"file ends inside tensor {name!r}")


def read_checkpoint(path: str | os.PathLike) -> object:
    """The file's raw content (a Lightning checkpoint stays a dict with its optimizer/RNG entries)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return dict(iter_safetensors(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (corrupt, truncated, or a pickle with forbidden globals)
        raise unreadable(path, exc) from None


def unwrap_state_dict(obj: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return unwrap_state_dict(read_checkpoint(path), path)


def iter_tensors(path: str | os.PathLike, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` pairs of the file's state dict, floating tensors converted to ``dtype`` and all
    placed on ``device`` as they are handed out, each file copy dropped by the reader once converted.

    safetensors: read one tensor at a time. Torch files: read whole (torch.load keeps one storage per
    tensor), then converted and released one by one, so the process holds at most the converted model
    plus what is left of the file's copy, never both in full.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        state = load_state_dict(path)
        while state:
            key = next(iter(state))
            tensor = state.pop(key)
            yield key, tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
        return
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        yield from iter_safetensors(path, dtype, torch.device(device) if device is not None else None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise unreadable(path, exc) from None


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
    """Write ``tensors`` (floating ones cast to ``dtype`` if given) one at a time, never a second copy of all."""
    def target(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    header, offset = {}, 0
    for name, t in tensors.items():
        size = t.numel() * target(t).itemsize
        header[name] = {"dtype": SAFETENSORS_NAMES[target(t)], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}  # transformers refuses safetensors files without it
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data block starts 8-byte aligned, padded with spaces as the format allows
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for t in tensors.values():
            data = t.detach().to(device="cpu", dtype=target(t)).contiguous()
            if data.numel():
                f.write(memoryview(data.view(-1).view(torch.uint8).numpy()))


def select_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys under the first of ``prefixes`` present in ``state``, with that prefix removed ('' = keep all)."""
    for prefix in prefixes:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return {}


def check_fit(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line error naming ``source`` and the first mismatches unless ``state`` fits strictly."""
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


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``strict=True`` load, each tensor cast to the module's dtype for it."""
    check_fit(module, state, source)
    expected = module.state_dict()
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
