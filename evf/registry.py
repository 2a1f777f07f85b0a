"""A tiny timm-style registry, one per plugin slot.

Each entry records the plugin class and the keyword arguments of its tiny random-weight
variant, so contract tests can loop over everything registered.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Entry:
    cls: type
    tiny: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, slot: str):
        self.slot = slot
        self.entries: dict[str, Entry] = {}

    def register(self, name: str, tiny: dict[str, Any] | None = None) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            if name in self.entries:
                raise ValueError(f"{self.slot} {name!r} registered twice")
            self.entries[name] = Entry(cls, dict(tiny or {}))
            return cls

        return wrap

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(sorted(self.entries))

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            raise KeyError(f"unknown {self.slot} {name!r}; registered: {', '.join(sorted(self.entries))}")
        return self.entries[name]

    def create(self, name: str, tiny: bool = False, **kwargs: Any):
        entry = self.get(name)
        return entry.cls(**{**(entry.tiny if tiny else {}), **kwargs})


def import_class(path: str) -> type:
    """The class (or function) a dotted ``class_path`` names, e.g. ``datamodules.RefCocoDataModule``; raises
    ``ImportError``/``AttributeError`` if there is none."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
