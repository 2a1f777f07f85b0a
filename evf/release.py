"""Official EVF-SAM release folders (config.json + weights + tokenizer files): key mapping, loading, export.

Loading builds the model with its parameters on the meta device and assigns the file's tensors to it,
each converted to the requested dtype / device as it is read, so the process holds about one copy of
the weights (never the file's copy, a converted copy and a randomly initialised model at once).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from evf.checkpoint import WEIGHT_FILES, CheckpointError, check_fit, iter_tensors, write_safetensors
from evf.encoders import ENCODERS, Beit3Encoder
from evf.encoders.beit3_model import BEIT3_CONFIGS
from evf.errors import first_line
from evf.io import atomic_dir, write_text_atomic
from evf.sam import SAM_BACKENDS, SamBackend
from evf.sam.sam2 import release_key_to_sam2, sam2_key_to_release
from evf.tokenizer import SPM_FILENAME, toy_tokenizer_dir

# Official EVF-SAM top-level children -> ours (spec §1). One table, applied to key prefixes.
OFFICIAL_PREFIXES = {
    "visual_model.": "sam.model.",
    "mm_extractor.beit3.": "encoder.beit3.",
    "text_hidden_fcs.0.": "projector.",
}
# Renames inside ``visual_model.`` where the official vendored SAM code differs from the package we
# build on: (official -> ours, ours -> official), each the identity on every key it does not concern.
SAM_KEY_RENAMES: list[tuple[Callable[[str], str], Callable[[str], str]]] = [
    (release_key_to_sam2, sam2_key_to_release),  # SAM-2 memory-encoder fuser: weight <-> gamma (spec T16)
]
# config.json "architectures" -> (backend registry name, {sam_scale: backend kwargs}).
OFFICIAL_BACKENDS: dict[str, tuple[str, dict[str, dict]]] = {
    "EvfSamModel": ("sam1", {"huge": {"variant": "vit_h"}, "large": {"variant": "vit_l"},
                             "base": {"variant": "vit_b"}, "tiny": {"variant": "tiny"}}),
    # The official EvfSam2Model builds SAM **2.0** (sam2_hiera_{l,t}.yaml) and was trained with SAM-2 frozen.
    "EvfSam2Model": ("sam2", {"large": {"variant": "large", "version": "2.0"}, "tiny": {"variant": "tiny", "version": "2.0"},
                              "toy": {"variant": "toy", "version": "2.0"}}),
    "EvfEffiSamModel": ("efficientsam", {"small": {"variant": "s"}, "tiny": {"variant": "ti"}, "toy": {"variant": "toy"}}),
}
TOKENIZER_FILES = (SPM_FILENAME, "special_tokens_map.json", "tokenizer_config.json", "added_tokens.json")
SAM21_ONLY_KEY = "visual_model.no_obj_embed_spatial"  # present in SAM-2.1 weights only (spec T15)


# -- key mapping ------------------------------------------------------------------------------
def official_to_ours(key: str) -> str:
    for theirs, ours in OFFICIAL_PREFIXES.items():
        if key.startswith(theirs):
            rest = key[len(theirs):]
            if theirs == "visual_model.":
                for to_ours, _ in SAM_KEY_RENAMES:
                    rest = to_ours(rest)
            return ours + rest
    return key  # not an official key: left as is, so the strict check reports it


def ours_to_official(key: str) -> str:
    for theirs, ours in OFFICIAL_PREFIXES.items():
        if key.startswith(ours):
            rest = key[len(ours):]
            if theirs == "visual_model.":
                for _, to_official in SAM_KEY_RENAMES:
                    rest = to_official(rest)
            return theirs + rest
    return key


def rename_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official release state dict with our key names."""
    return {official_to_ours(k): v for k, v in state.items()}


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict with the official release's key names."""
    return {ours_to_official(k): v for k, v in state.items()}


# -- loading ----------------------------------------------------------------------------------
@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside the block is swapped for a meta-device one (no memory), and the
    ``torch.nn.init`` initialisers skip meta tensors: they would compute nothing, and the first one without
    a native meta kernel (``normal_``) imports torch's compiler stack, ~5 s. Buffers are built for real
    (they are small), so the non-persistent ones (SAM-1's pixel_mean / pixel_std, ...), which no file
    holds, get their computed values. Patches ``torch.nn``: build no other model in another thread meanwhile."""
    register = nn.Module.register_parameter
    initialisers = {name: getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")}

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    def skip_on_meta(init: Callable) -> Callable:
        return lambda tensor, *args, **kwargs: tensor if tensor.is_meta else init(tensor, *args, **kwargs)

    nn.Module.register_parameter = register_on_meta
    for name, init in initialisers.items():
        setattr(nn.init, name, skip_on_meta(init))
    try:
        yield
    finally:
        nn.Module.register_parameter = register
        for name, init in initialisers.items():
            setattr(nn.init, name, init)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if isinstance(resolved, torch.dtype):
        return resolved
    raise ValueError(f"unknown dtype {dtype!r}; give e.g. torch.float32, 'float16' or 'bfloat16'")


JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def json_value(value: object) -> str:
    """A config value as it reads in the file, e.g. ``["tiny"]`` (an array)."""
    return f"{json.dumps(value)[:60]} (a JSON {JSON_TYPES.get(type(value), type(value).__name__)})"


def architecture(config: dict) -> str:
    """The release's class name: the first of ``architectures`` (EvfSamModel when the key is absent)."""
    return (config.get("architectures") or ["EvfSamModel"])[0]


def check_release_config(config: object, config_file: Path) -> dict:
    """The keys ``from_pretrained`` reads, checked for type and value; each problem names the file and key.

    ``architectures`` must be a list of class names as Hugging Face writes it: a bare string is refused
    (rather than taken for a one-element list) so a hand-edited file is fixed once, not read two ways."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object of settings, got {json_value(config)}")
    names = config.get("architectures")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f'{config_file}: "architectures" must be a list of class names such as ["EvfSamModel"], '
                              f"got {json_value(names)}")
    arch = architecture(config)
    if arch not in OFFICIAL_BACKENDS:
        raise CheckpointError(f"{config_file}: unsupported architecture {arch!r}; known: {sorted(OFFICIAL_BACKENDS)}")
    scales = OFFICIAL_BACKENDS[arch][1]
    sam_scale = config.get("sam_scale")
    if sam_scale is None:
        raise CheckpointError(f"{config_file}: no sam_scale for {arch}; known: {sorted(scales)}")
    if not isinstance(sam_scale, str) or sam_scale not in scales:
        shown = repr(sam_scale) if isinstance(sam_scale, str) else json_value(sam_scale)
        raise CheckpointError(f"{config_file}: unsupported sam_scale {shown} for {arch}; known: {sorted(scales)}")
    size = config.get("mm_extractor_scale", "large")
    if not isinstance(size, str) or size not in BEIT3_CONFIGS:
        shown = repr(size) if isinstance(size, str) else json_value(size)
        raise CheckpointError(f"{config_file}: unsupported mm_extractor_scale {shown}; known: {sorted(BEIT3_CONFIGS)}")
    return config


def read_release_config(path: Path) -> tuple[Path, dict, Path]:
    """``(folder, config, weights file)`` of a release folder (or of a weights file in one)."""
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no config.json in {folder}: not an EVF-SAM release folder")
    try:
        config = json.loads(config_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"cannot read {config_file}: not valid JSON ({first_line(exc, 200)})") from None
    config = check_release_config(config, config_file)
    weights = path if path.is_file() else next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"no weights ({' or '.join(WEIGHT_FILES)}) in {folder}")
    return folder, config, weights


def build_without_weights(cls: type[nn.Module], config: dict, tokenizer: Path | None = None, sam21: bool = False,
                          **kwargs) -> nn.Module:
    """The model a release ``config`` describes, its parameters on the meta device (``sam21``: the
    SAM-2 weights hold SAM-2.1's extra keys). ``kwargs`` go to ``cls``."""
    backend, scales = OFFICIAL_BACKENDS[architecture(config)]
    backend_kwargs = dict(scales[config["sam_scale"]])
    if backend == "sam2" and sam21:
        backend_kwargs["version"] = "2.1"
    with parameters_on_meta():
        encoder = ENCODERS.create("beit3", size=config.get("mm_extractor_scale", "large"),
                                  tokenizer=str(tokenizer) if tokenizer else None)
        return cls(encoder, SAM_BACKENDS.create(backend, **backend_kwargs), **kwargs)


def load_release(cls: type[nn.Module], path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                 device: torch.device | str | None = None,
                 build: Callable[[dict, Path, bool], nn.Module] | None = None, **kwargs) -> nn.Module:
    """See ``EVFSAM.from_pretrained``. ``build(config, folder, sam21)``, if given, returns the weightless model
    to load instead of the one ``config`` describes (``evf.create_model`` passes its preset's, checked against
    the folder)."""
    folder, config, weights = read_release_config(Path(path))
    dtype, device = as_dtype(dtype), torch.device(device or "cpu")
    state = {}
    for key, tensor in iter_tensors(weights, dtype, device):  # each tensor converted as it is read
        state[official_to_ours(key)] = tensor
    sam21 = official_to_ours(SAM21_ONLY_KEY) in state
    model = build(config, folder, sam21) if build else build_without_weights(cls, config, folder, sam21=sam21, **kwargs)
    check_fit(model, state, str(weights))
    expected = model.state_dict()
    state = {k: v if v.is_floating_point() else v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device, dtype=dtype)  # the buffers no file holds; the assigned tensors are already there
    left = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{weights}: {len(left)} tensors were never loaded (e.g. {left[0]})")
    return model


# -- export -----------------------------------------------------------------------------------
def official_architecture(sam: SamBackend) -> tuple[str, str]:
    """``(architectures entry, sam_scale)`` under which ``from_pretrained`` rebuilds this backend."""
    name = next((n for n in SAM_BACKENDS if SAM_BACKENDS.get(n).cls is type(sam)), None)
    for arch, (backend, scales) in OFFICIAL_BACKENDS.items():
        if backend == name:
            # SAM-2.1 is detected by its keys on load, so only the variant has to match
            scale = next((s for s, kw in scales.items() if kw["variant"] == getattr(sam, "variant", None)), None)
            if scale is not None:
                return arch, scale
    raise ValueError(f"{type(sam).__name__} variant {getattr(sam, 'variant', None)!r} has no official release layout")


def encoder_size(encoder: nn.Module) -> str:
    """The BEiT-3 size name of an encoder an official release can hold (early fusion, image CLS, all layers)."""
    if not isinstance(encoder, Beit3Encoder) or (encoder.mode, encoder.feature, encoder.depth) != ("early", "image_cls", None):
        raise ValueError("official releases hold a BEiT-3 encoder in early-fusion mode with the image-CLS feature "
                         f"and all layers; got {type(encoder).__name__}")
    return next(size for size, cfg in BEIT3_CONFIGS.items() if cfg == encoder.cfg)


def copy_tokenizer(encoder: Beit3Encoder, folder: Path) -> None:
    source = Path(encoder.tokenizer_path or toy_tokenizer_dir())
    if source.is_file() and source.name != SPM_FILENAME:
        shutil.copy(source, folder / SPM_FILENAME)  # a bare sentencepiece file: nothing beside it belongs to it
    else:
        source = source.parent if source.is_file() else source
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, folder / name)
    if not (folder / "tokenizer_config.json").is_file():  # transformers' AutoTokenizer reads the class from it
        write_text_atomic(folder / "tokenizer_config.json", json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}) + "\n")


def save_release(model: nn.Module, folder: str | os.PathLike, dtype: torch.dtype | str | None = None) -> Path:
    """See ``EVFSAM.save_pretrained``."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        raise FileExistsError(f"{folder} is a non-empty folder that is not a release folder; export elsewhere")
    arch, sam_scale = official_architecture(model.sam)
    size = encoder_size(model.encoder)
    state = model.state_dict()
    dtype = as_dtype(dtype) if dtype is not None else next(v.dtype for v in state.values() if v.is_floating_point())
    config = {"architectures": [arch], "model_type": "evf", "mm_extractor_scale": size, "sam_scale": sam_scale,
              "hidden_size": model.encoder.out_dim, "out_dim": model.sam.prompt_dim,
              "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
              "torch_dtype": str(dtype).removeprefix("torch.")}
    with atomic_dir(folder) as tmp:
        write_safetensors(tmp / "model.safetensors", to_official(state), dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_tokenizer(model.encoder, tmp)
    return folder


__all__ = ["OFFICIAL_BACKENDS", "OFFICIAL_PREFIXES", "WEIGHT_FILES", "build_without_weights", "encoder_size", "load_release",
           "official_architecture", "official_to_ours", "ours_to_official", "parameters_on_meta", "read_release_config",
           "rename_official", "save_release", "to_official"]
