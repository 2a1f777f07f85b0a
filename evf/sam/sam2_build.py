"""Building ``sam2`` models from the package's own Hydra configs, with the composed configs cached.

``sam2.build_sam.build_sam2`` composes its YAML config through Hydra on every call (reading the files and
parsing each override with Hydra's grammar), which costs more than building a small model. ``build_sam2_model``
takes the same steps (compose with the same overrides, resolve, instantiate, eval) but composes each
(config, overrides) pair once per process. ``tests/test_sam_backends.py`` checks that it builds exactly what
``build_sam2`` builds: the same weights from the same seed and the same attributes on every submodule.
"""
from __future__ import annotations

import contextlib
import copy
import functools

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from evf.config_errors import ConfigError

VERSIONS = {"2.0": "configs/sam2/sam2_hiera_{}.yaml", "2.1": "configs/sam2.1/sam2.1_hiera_{}.yaml"}
VARIANTS = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}

# What ``build_sam2(..., apply_postprocessing=True)`` (its default, which the official EVF-SAM2 uses) adds.
POSTPROCESSING_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)

# The toy variant is the real Hiera-T config shrunk by Hydra overrides (128 px input, 32-wide SAM heads),
# so it has every submodule of the full model, memory attention and memory encoder included.
TOY_OVERRIDES = (
    "++model.image_size=128",
    "++model.image_encoder.trunk.embed_dim=8", "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,3,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[2,2]",
    "++model.image_encoder.trunk.window_spec=[4,4,4,2]",
    "++model.image_encoder.neck.d_model=32", "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.memory_attention.d_model=32", "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=32", "++model.memory_attention.layer.dim_feedforward=32",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.in_dim=32", "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32", "++model.memory_encoder.fuser.layer.dim=32",
)


def config_and_overrides(version: str, variant: str) -> tuple[str, tuple[str, ...]]:
    """The ``sam2`` config name and the Hydra overrides (toy shrinking first, then post-processing) of a model."""
    if version not in VERSIONS:
        raise ConfigError(f"unknown SAM-2 version {version!r}; choose from {sorted(VERSIONS)}")
    if variant != "toy" and variant not in VARIANTS:
        raise ConfigError(f"unknown SAM-2 variant {variant!r}; choose from {['toy', *VARIANTS]}")
    toy = TOY_OVERRIDES if variant == "toy" else ()
    return VERSIONS[version].format(VARIANTS.get(variant, "t")), (*toy, *POSTPROCESSING_OVERRIDES)


@functools.cache
def composed_config(config: str, overrides: tuple[str, ...]):
    """The resolved OmegaConf config of ``config`` with ``overrides`` (callers copy it before use)."""
    import sam2  # noqa: F401  (registers sam2's configs with Hydra's search path)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    cfg = compose(config_name=config, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def build_sam2_model(version: str, variant: str) -> nn.Module:
    """A random-weight ``SAM2Base`` in eval mode (``variant="toy"``: Hiera-T shrunk), as ``build_sam2`` builds it."""
    from hydra.utils import instantiate

    cfg = copy.deepcopy(composed_config(*config_and_overrides(version, variant)))
    # Under ``with torch.device("meta")`` Hiera's drop-path rates (``torch.linspace(...)`` read back with
    # ``.item()``) still come from the CPU; everything else stays weightless (SAM-2-L: no 224M random inits).
    with LinspaceOnCpu() if torch.get_default_device().type == "meta" else contextlib.nullcontext():
        return instantiate(cfg.model, _recursive_=True).eval()


class LinspaceOnCpu(TorchFunctionMode):
    """Runs ``torch.linspace`` on the CPU inside a meta-device context (its values are read as Python floats)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)
