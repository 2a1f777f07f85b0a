"""Named EVF-SAM models, timm / open_clip style: ``evf.create_model(name)`` and ``evf.list_models()``.

A preset names one encoder plugin and one SAM-backend plugin with their arguments: the architecture only.
Weights come from ``checkpoint`` (an official release folder) or from the plugins' own arguments
(``encoder={"checkpoint": ...}``, ``sam={"checkpoint": ...}``). YAML names a preset through the same function:

    model:
      model:
        class_path: evf.create_model
        init_args: {name: evf-sam-beit3l-samh, sam: {checkpoint: weights/sam_vit_h_4b8939.pth}}

Names are ``<family>-<encoder>-<sam>``:
  family   the official model the architecture belongs to: ``evf-sam`` (SAM-1 backend), ``evf-sam2``,
           ``evf-sam2.1``, ``evf-effisam``;
  encoder  ``beit3l``, ``beit3b``, ``clipl-openai``, ``clipl-laion2b``, ``cliph-laion2b``, ``vilt``, followed by
           the fusion where it is not the paper's early fusion over all layers (``-text``, ``-late``, ``-l1-12``);
  sam      ``samh``, ``hieral`` / ``hierat`` (SAM-2 Hiera-L / -T), ``effisams`` / ``effisamti``.
``tiny-<encoder>-<sam>`` (registry names) are random-weight test models: every registered backend with BEiT-3,
every registered encoder with SAM-1.
"""
from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evf.checkpoint import CheckpointError
from evf.config_errors import ConfigError, nearest
from evf.encoders import ENCODERS
from evf.model import EVFSAM
from evf.presence import DEFAULT_PRESENCE_THRESHOLD
from evf.sam import SAM_BACKENDS


@dataclass(frozen=True)
class Preset:
    encoder: str  # ENCODERS name
    sam: str  # SAM_BACKENDS name
    about: str  # one line
    encoder_args: dict[str, Any] = field(default_factory=dict)
    sam_args: dict[str, Any] = field(default_factory=dict)
    release: str = ""  # the official release folders it loads (Hugging Face ids), if any


SAM_H = {"variant": "vit_h"}
BEIT3_L = {"size": "large"}
# The official EVF-SAM2 builds SAM-2.0 and trains with SAM-2 frozen (experiments/ablations/tab5_beit3_l_sam2_l.yaml).
SAM2_FROZEN = {"version": "2.0", "train_prompt_encoder": False, "train_mask_decoder": False}

PRESETS: dict[str, Preset] = {
    # -- official families ----------------------------------------------------------------------
    "evf-sam-beit3l-samh": Preset("beit3", "sam1", "EVF-SAM: BEiT-3-L early fusion + SAM ViT-H (Tab.4 L1-24, Tab.5)",
                                  BEIT3_L, SAM_H, release="YxZhang/evf-sam, YxZhang/evf-sam-multitask"),
    "evf-sam2-beit3l-hieral": Preset("beit3", "sam2", "EVF-SAM2: BEiT-3-L + SAM-2.0 Hiera-L, SAM-2 frozen (Tab.5)",
                                     BEIT3_L, {"variant": "large", **SAM2_FROZEN},
                                     release="YxZhang/evf-sam2, YxZhang/evf-sam2-multitask"),
    "evf-sam2-beit3l-hierat": Preset("beit3", "sam2", "BEiT-3-L + SAM-2.0 Hiera-T, SAM-2 frozen (official code, no weights)",
                                     BEIT3_L, {"variant": "tiny", **SAM2_FROZEN}),
    "evf-sam2.1-beit3l-hieral": Preset("beit3", "sam2", "BEiT-3-L + SAM-2.1 Hiera-L, SAM-2 frozen (release folders with SAM-2.1 keys)",
                                       BEIT3_L, {"variant": "large", **SAM2_FROZEN, "version": "2.1"}),
    "evf-effisam-beit3l-effisams": Preset("beit3", "efficientsam", "EVF-EffiSAM: BEiT-3-L + EfficientSAM-S (Tab.5; code only, no weights)",
                                          BEIT3_L, {"variant": "s"}),
    "evf-effisam-beit3l-effisamti": Preset("beit3", "efficientsam", "BEiT-3-L + EfficientSAM-Ti (official code, no weights)",
                                           BEIT3_L, {"variant": "ti"}),
    # -- paper Tab.4 (fusion ablation, SAM ViT-H) and Tab.5 (other encoders) ------------------------
    "evf-sam-beit3b-samh": Preset("beit3", "sam1", "BEiT-3-B early fusion + SAM ViT-H (Tab.5)", {"size": "base"}, SAM_H),
    "evf-sam-beit3l-text-samh": Preset("beit3", "sam1", "BEiT-3-L text only + SAM ViT-H (Tab.4)", {**BEIT3_L, "mode": "text"}, SAM_H),
    "evf-sam-beit3l-late-samh": Preset("beit3", "sam1", "BEiT-3-L late concat + SAM ViT-H (Tab.4)", {**BEIT3_L, "mode": "late"}, SAM_H),
    "evf-sam-beit3l-l1-12-samh": Preset("beit3", "sam1", "BEiT-3-L early fusion, layers 1-12 + SAM ViT-H (Tab.4)",
                                        {**BEIT3_L, "depth": 12}, SAM_H),
    "evf-sam-clipl-openai-text-samh": Preset("clip", "sam1", "CLIP-L (OpenAI) text + SAM ViT-H (Tab.4, Tab.5)",
                                             {"model": "ViT-L-14-quickgelu", "mode": "text"}, SAM_H),
    "evf-sam-clipl-openai-late-samh": Preset("clip", "sam1", "CLIP-L (OpenAI) late concat + SAM ViT-H (Tab.4)",
                                             {"model": "ViT-L-14-quickgelu", "mode": "late"}, SAM_H),
    "evf-sam-clipl-laion2b-text-samh": Preset("clip", "sam1", "CLIP-L (OpenCLIP laion2b) text + SAM ViT-H (Tab.4)",
                                              {"model": "ViT-L-14", "mode": "text"}, SAM_H),
    "evf-sam-clipl-laion2b-late-samh": Preset("clip", "sam1", "CLIP-L (OpenCLIP laion2b) late concat + SAM ViT-H (Tab.4)",
                                              {"model": "ViT-L-14", "mode": "late"}, SAM_H),
    "evf-sam-cliph-laion2b-text-samh": Preset("clip", "sam1", "CLIP-H (OpenCLIP laion2b) text + SAM ViT-H (Tab.4)",
                                              {"model": "ViT-H-14", "mode": "text"}, SAM_H),
    "evf-sam-cliph-laion2b-late-samh": Preset("clip", "sam1", "CLIP-H (OpenCLIP laion2b) late concat + SAM ViT-H (Tab.4)",
                                              {"model": "ViT-H-14", "mode": "late"}, SAM_H),
    "evf-sam-vilt-samh": Preset("vilt", "sam1", "ViLT-B/32 early fusion + SAM ViT-H (Tab.4, Tab.5)", {"size": "base", "mode": "early"}, SAM_H),
    "evf-sam-vilt-text-samh": Preset("vilt", "sam1", "ViLT-B/32 text only + SAM ViT-H (Tab.4)", {"size": "base", "mode": "text"}, SAM_H),
    "evf-sam-vilt-late-samh": Preset("vilt", "sam1", "ViLT-B/32 late concat + SAM ViT-H (Tab.4)", {"size": "base", "mode": "late"}, SAM_H),
}


def tiny_presets() -> dict[str, Preset]:
    """``tiny-<encoder>-<sam>``: each registered backend with BEiT-3 and each registered encoder with SAM-1 (the
    official pair), as their tiny random-weight registry variants; derived, so a new plugin gets its preset at once."""
    pairs = [("beit3", s) for s in SAM_BACKENDS] + [(e, "sam1") for e in ENCODERS if e != "beit3"]
    return {f"tiny-{e}-{s}": Preset(e, s, f"random-weight tiny {e} + tiny {s} (tests, quickstart)",
                                    ENCODERS.get(e).tiny, SAM_BACKENDS.get(s).tiny) for e, s in pairs}


def all_presets() -> dict[str, Preset]:
    return {**PRESETS, **tiny_presets()}


def get_preset(name: str) -> Preset:
    presets = all_presets()
    if name not in presets:
        close = nearest(str(name), presets)
        raise ConfigError(f"unknown model preset {name!r}" + (f" (did you mean {close!r}?)" if close else "")
                         + "; evf.list_models() lists them")
    return presets[name]


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted preset names, optionally filtered by a shell-style ``pattern`` (``"evf-sam2*"``, ``"tiny-*"``)."""
    return sorted(n for n in all_presets() if pattern is None or fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, checkpoint: str | None = None, encoder: dict[str, Any] | None = None,
                 sam: dict[str, Any] | None = None, train_encoder: bool = True, bce_weight: float = 1.0,
                 dice_weight: float = 1.0, presence_head: bool = False, presence_weight: float = 1.0,
                 presence_threshold: float = DEFAULT_PRESENCE_THRESHOLD) -> EVFSAM:
    """The ``EVFSAM`` a preset names (``evf.list_models()``), with random weights or ``checkpoint``'s.

    Args:
        name: preset name, e.g. ``evf-sam-beit3l-samh`` or ``tiny-beit3-sam1``.
        checkpoint: an official release folder (config.json + weights + tokenizer), or the weights file in one,
            of the preset's family; loaded strictly in the weights' footprint, its tokenizer files included.
            A folder of another family is refused in one line.
        encoder, sam: arguments replacing the preset's for the encoder / SAM-backend plugin, e.g. the
            plugins' own weights ``{"checkpoint": ...}``, a tokenizer, the Tab.6 switches.
        train_encoder, bce_weight, dice_weight: as ``EVFSAM``.
        presence_head, presence_weight, presence_threshold: the gRES no-target head, as ``EVFSAM`` (docs/gres.md).
    """
    preset = get_preset(name)
    encoder_args, sam_args = {**preset.encoder_args, **(encoder or {})}, {**preset.sam_args, **(sam or {})}
    model_args = {"train_encoder": train_encoder, "bce_weight": bce_weight, "dice_weight": dice_weight}
    if presence_head:  # only when on: the paper recipe builds exactly what it did before
        model_args.update(presence_head=True, presence_weight=presence_weight, presence_threshold=presence_threshold)
    if checkpoint is None:
        return EVFSAM(ENCODERS.create(preset.encoder, **encoder_args), SAM_BACKENDS.create(preset.sam, **sam_args), **model_args)
    if "checkpoint" in (encoder or {}) or "checkpoint" in (sam or {}):
        raise ConfigError(f"create_model({name!r}): give weights as a release folder (checkpoint=) or per plugin, not both")
    if presence_head:  # a release has no presence head: load it as released, then add a fresh head to fine-tune
        from evf.presence import attach_presence_head

        model_args = {k: v for k, v in model_args.items() if not k.startswith("presence_")}
        model = load_release_into_preset(name, preset, Path(checkpoint), encoder_args, sam_args, model_args)
        return attach_presence_head(model, presence_weight, presence_threshold)
    return load_release_into_preset(name, preset, Path(checkpoint), encoder_args, sam_args, model_args)


def load_release_into_preset(name: str, preset: Preset, path: Path, encoder_args: dict, sam_args: dict,
                             model_args: dict) -> EVFSAM:
    """The preset's model (built weightless first, to check it is the family the folder holds) with the
    release's weights; the folder's tokenizer files unless ``encoder_args`` names another tokenizer."""
    from evf import release

    folder, config, _ = release.read_release_config(path)
    if "tokenizer" in inspect.signature(ENCODERS.get(preset.encoder).cls).parameters:
        encoder_args = {"tokenizer": str(folder), **encoder_args}
    with release.parameters_on_meta():
        model = EVFSAM(ENCODERS.create(preset.encoder, **encoder_args), SAM_BACKENDS.create(preset.sam, **sam_args),
                       **model_args)
    try:
        ours = (*release.official_architecture(model.sam), release.encoder_size(model.encoder))
    except ValueError as exc:
        raise CheckpointError(f"{folder}: preset {name}, as configured, cannot hold an official release: {exc}") from None
    theirs = ((config.get("architectures") or ["EvfSamModel"])[0], config["sam_scale"], config.get("mm_extractor_scale", "large"))
    if ours != theirs:
        raise CheckpointError(f"{folder} holds {describe(*theirs)}, but preset {name} is {describe(*ours)}")
    version = getattr(model.sam, "version", None)

    def checked(_config: dict, _folder: Path, sam21: bool) -> EVFSAM:
        if version is not None and sam21 != (version == "2.1"):
            raise CheckpointError(f"{folder} holds SAM-{'2.1' if sam21 else '2.0'} weights, but preset {name} builds SAM-{version}")
        return model

    return release.load_release(EVFSAM, path, build=checked)


def describe(architecture: str, sam_scale: str, beit3_size: str) -> str:
    return f"{architecture} (sam_scale {sam_scale}, BEiT-3 {beit3_size})"
