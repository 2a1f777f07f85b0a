"""EVF-SAM: text-prompted Segment Anything (multimodal encoder -> one SAM prompt token -> mask).

    import evf
    evf.list_models("evf-*")                                    # named presets
    model = evf.create_model("evf-sam-beit3l-samh", checkpoint="path/to/evf-sam")  # an official release folder
    masks = model.predict(image, ["the dog on the left"])       # bool [N, H, W]
    model, datamodule, *_ = evf.load("runs/quickstart")         # a run folder, .ckpt, release folder or YAML

``import evf`` stays cheap (the ``evf`` command starts with it): torch and the plugins load on first use.
"""
TYPE_CHECKING = False  # not ``from typing import TYPE_CHECKING``: typing alone costs more than this whole module
if TYPE_CHECKING:
    from evf.loading import load
    from evf.presets import create_model, list_models

__all__ = ["create_model", "list_models", "load"]
LAZY = {"create_model": "evf.presets", "list_models": "evf.presets", "load": "evf.loading"}


def __getattr__(name: str):  # PEP 562: ``evf.create_model`` imports evf.presets (and torch) when first used
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'evf' has no attribute {name!r}")
