"""The one checkpoint reader (and safetensors writer): safetensors or torch files, always ``weights_only=True``.

``iter_tensors`` hands a state dict out one converted tensor at a time, copied from a memory map of
the file whose pages are dropped from the process once each tensor is copied out, so a loader never
holds the file's copy and the model's copy of all weights at once.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from evf.errors import UserError, first_line
from evf.io import atomic_path

WRAPPER_KEYS = ("state_dict", "model", "module")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a Hugging Face-style folder holds, in order of preference
# safetensors dtype names (the format's spec) -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


# torch's weights-only unpickler names the global a file asks for (builtins lose their module name) ...
REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)")
# ... or the object it would build or call with one
REFUSED_CALL = ("Trying to call reduce for unrecognized function", "Can only create new object", "Can only build")
TORCH_ADVICE = "  (Could this error message be improved?"


def weights_only_refusal(path: Path, exc: Exception) -> CheckpointError | None:
    """torch's weights-only unpickler refused the file: it asks for code (a global outside the allowed set: say so and
    which), or it is not a pickle torch writes. torch's own message advises ``weights_only=False``, i.e. running
    whatever the file holds; that advice is never repeated."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = REFUSED_GLOBAL.search(text)
    if found or any(marker in text for marker in REFUSED_CALL):
        name = found and (found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}")
        detail = f"it names the global '{name}'" if name else "it builds objects other than tensors and containers"
        return CheckpointError(f"refused checkpoint {path}: it holds code, not only weights and plain data ({detail}); "
                               "evf never runs code from a checkpoint")
    reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if "WeightsUnpickler error:" in text else ""
    return CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint ({reason or 'unreadable pickle'})")


def unreadable(path: Path, exc: Exception) -> CheckpointError:
    detail = first_line(exc, 300).split(TORCH_ADVICE)[0][:200]
    kind = "struct.error" if isinstance(exc, struct.error) else type(exc).__name__  # a file too short for its header
    return weights_only_refusal(path, exc) or CheckpointError(f"cannot read checkpoint {path}: {kind}: {detail}")


def is_cut_zip(path: Path) -> bool:
    """A zip archive (what torch.save writes) whose end, which holds the index, is missing: a copy cut short."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def read_checkpoint(path: str | os.PathLike, mapped: bool = False) -> object:
    """The file's raw content (a Lightning checkpoint stays a dict with its optimizer/RNG entries).
    ``mapped``: memory-map a zip-format torch file instead of reading it (tensors are read only when touched)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return dict(iter_tensors(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if is_cut_zip(path):
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupted (not a complete torch zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)  # noqa: TID251 - the one reader, weights only
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


# -- streamed reading ---------------------------------------------------------------------------
def safetensors_header(path: Path) -> tuple[dict, int]:
    """``({name: {dtype, shape, data_offsets}}, offset of the data block)``, checked against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            nbytes = torch.Size(info["shape"]).numel() * SAFETENSORS_DTYPES[info["dtype"]].itemsize
            fits = end - begin == nbytes and 0 <= begin <= end <= size - 8 - length
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError):
            raise ValueError(f"tensor {name!r}: malformed header entry {str(info)[:80]}") from None
        if not fits:
            raise ValueError(f"tensor {name!r}: data_offsets {info['data_offsets']} do not fit its shape or the file")
    return header, 8 + length


def mapped_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of a private memory map of the file, one per tensor (the map closes with the last view)."""
    header, data_start = safetensors_header(path)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: a write never reaches the file
    for name, info in header.items():
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if begin == end:  # frombuffer refuses empty slices
            yield name, torch.empty(info["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(mapped, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=data_start + begin)
        yield name, flat.view(info["shape"])


def mapped_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A torch file's state dict and whether it is memory-mapped (zip format) or was read whole (legacy)."""
    try:
        return unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True), path), True  # noqa: TID251 - weights only
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 (legacy format, or unreadable: the plain reader says which)
        return load_state_dict(path), False


def libc_madvise():
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError, TypeError):  # no POSIX libc (Windows): mapped pages then stay counted
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


MADVISE = libc_madvise() if hasattr(mmap, "MADV_DONTNEED") else None


def release_mapped_pages(tensor: torch.Tensor) -> None:
    """Drop the pages under a file-mapped tensor from this process's resident set.

    Kept, every page read would count in RSS until the whole map is closed: the file's size on top of
    the converted weights. Only pages wholly inside the tensor's storage are dropped (a page it shares
    with a neighbour stays); they are file pages that were read, so touching them again re-reads the
    file. Only for tensors on a file map: on anonymous memory it would zero the pages.
    """
    if MADVISE is not None and tensor.numel():
        storage = tensor.untyped_storage()
        start = -(-storage.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (storage.data_ptr() + storage.nbytes()) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            MADVISE(start, end - start, mmap.MADV_DONTNEED)


def iter_tensors(path: str | os.PathLike, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` pairs of the file's state dict, each a fresh copy on ``device`` (floating tensors
    in ``dtype`` if given): nothing handed out lives on the file's pages.

    The file is memory-mapped (safetensors, and torch files in the zip format) and each tensor's pages
    are dropped once it is copied out, so the process holds the copies plus about one tensor of the file.
    A legacy torch file is read whole, then converted and released tensor by tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            sources, mapped = mapped_safetensors(path), True
        else:
            state, mapped = mapped_torch_file(path)
            sources = ((key, state.pop(key)) for key in list(state))  # popped: each file copy dies once copied
        for key, source in sources:
            out = torch.empty(source.shape, dtype=dtype if dtype is not None and source.is_floating_point() else source.dtype,
                              device=device)
            out.copy_(source)
            if mapped:
                release_mapped_pages(source)
            del source
            yield key, out
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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
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


def summarize_load_error(exc: RuntimeError) -> str:
    """torch's multi-line ``load_state_dict`` error as one line: counts and the first key of each kind."""
    text = str(exc)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)"),
                           ("wrong shape", r"size mismatch for ([^:]+):")):
        found = re.findall(pattern, text)
        if label == "wrong shape" and found:
            parts.append(f"{len(found)} wrong shape (e.g. {found[0]})")
        elif found:
            keys = re.findall(r'"([^"]+)"', found[0])
            parts.append(f"{len(keys)} {label} (e.g. {keys[0] if keys else '?'})")
    return "; ".join(parts) or first_line(exc, 200)
