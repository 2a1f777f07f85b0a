"""What several ``evf`` commands share: checks of their command-line inputs and the model load.

Commands import this module, the library and ``evf.errors``, never each other nor ``evf.cli`` (which imports
them by name, only when run).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from evf.errors import UserError, first_line

if TYPE_CHECKING:  # torch and the model are imported on use, so `evf <command> --help` stays fast
    import torch

    from evf.model import EVFSAM

CHECKPOINT_HELP = ("EVF-SAM release folder (or its weights file), a Lightning .ckpt from 'evf fit', or a run folder "
                   "(its config.yaml + best, else last, checkpoint)")
CONFIG_HELP = "experiment/run YAML for a .ckpt or run folder (default: the run's config.yaml)"


def command_line_prompt(text: str, label: str) -> str:
    """A prompt given on the command line, stripped; refused if blank or not UTF-8. Python hands a byte that is
    not UTF-8 through ``sys.argv`` as a lone surrogate (``surrogateescape``), which no tokenizer can take."""
    bad = next((i for i, char in enumerate(text) if "\ud800" <= char <= "\udfff"), None)
    if bad is not None:
        byte = ord(text[bad]) - 0xDC00 if "\udc80" <= text[bad] <= "\udcff" else None
        offset = len(text[:bad].encode("utf-8", "surrogateescape"))
        shown = f"bad byte 0x{byte:02x}" if byte is not None else "a lone surrogate"
        raise UserError(f"{label} is not UTF-8 text ({shown} at offset {offset})")
    if not text.strip():
        raise UserError(f"{label} is empty")
    return text.strip()


def prepare_out_dir(out: str) -> Path:
    """Create ``out`` and prove it is writable before any work is done."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".evf-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output folder {folder} is not writable: {exc.strerror or type(exc).__name__}") from None
    return folder


def parse_device(device: str) -> torch.device:
    import torch

    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {device!r}: {first_line(exc)}") from None


def load_model(checkpoint: str, config: str | None) -> EVFSAM:
    """The model of ``--checkpoint`` (+ ``--config``), through ``evf.load`` (no datamodule is built)."""
    from evf.loading import load

    return load(checkpoint, config, datamodule=False).model
