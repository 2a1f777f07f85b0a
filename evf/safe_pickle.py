"""A restricted unpickler for data files such as RefCOCO's ``refs(unc).p``.

Those files hold only lists, dicts, tuples, strings and numbers. A plain ``pickle.load`` would
run any callable a tampered file names, so this loader refuses every global except the two
harmless builtin containers that older protocols reach through ``find_class`` (set, frozenset).

The refer toolkit's files are Python-2 pickles: their text is stored as byte strings with no
encoding recorded. They are decoded as UTF-8 (what the annotators' text is), with latin-1 only for
bytes that are not valid UTF-8, so "café" stays "café" instead of becoming "cafÃ©".
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any

from evf.errors import UserError, first_line

LATIN1_FALLBACK = "evf-latin1-fallback"


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: the bytes that are not valid UTF-8 are read as latin-1 (which maps every byte)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start:exc.end].decode("latin-1"), exc.end


codecs.register_error(LATIN1_FALLBACK, _latin1_fallback)

ALLOWED_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class PickleReadError(UserError, ValueError):
    """A pickle file that cannot be read as plain data (damaged, or not a pickle); names the file."""


class UnsafePickleError(PickleReadError):
    """The pickle names a global (class or function) outside the allowed plain types; names the file."""


class _PlainUnpickler(pickle.Unpickler):  # noqa: TID251 - the restricted unpickler itself
    def __init__(self, file, source: str):
        # Python-2 byte strings (the refer toolkit's text): UTF-8, latin-1 only where UTF-8 fails.
        # Python-3 pickles are unaffected: their str is always UTF-8 and their bytes stay bytes.
        super().__init__(file, encoding="utf-8", errors=LATIN1_FALLBACK)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle forbidden global '{module}.{name}' "
            "(only lists, dicts, tuples, str, int, float, bool and None are allowed)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refusing to unpickle a persistent id (not a plain-data pickle)")


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain plain containers and scalars; raise with the file name otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    return loads_plain(path.read_bytes(), str(path))


def loads_plain(data: bytes, source: str = "<bytes>") -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(data), source).load()
    except PickleReadError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError) as exc:  # what a damaged pickle makes the unpickler raise
        raise PickleReadError(f"{source}: not a readable pickle ({first_line(exc, 200)})") from None
