"""EVF-SAM: text-prompted Segment Anything (multimodal encoder -> one SAM prompt token -> mask).

    import evf
    evf.list_models("evf-*")                                    # named presets
    model = evf.create_model("evf-sam-beit3l-samh", checkpoint="path/to/evf-sam")  # an official release folder
    masks = model.predict(image, ["the dog on the left"])       # bool [N, H, W]

``import evf`` stays cheap (the ``evf`` command starts with it): torch and the plugins load on first use.
"""
TYPE_CHECKING = False  # not ``from typing import TYPE_CHECKING``: typing alone costs more than this whole module
if TYPE_CHECKING:
    from evf.presets import create_model, list_models

__all__ = ["create_model", "list_models"]


def __getattr__(name: str):  # PEP 562: ``evf.create_model`` imports evf.presets (and torch) when first used
    if name in __all__:
        from evf import presets

        return getattr(presets, name)
    raise AttributeError(f"module 'evf' has no attribute {name!r}")
