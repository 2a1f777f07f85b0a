"""``evf`` command line.

``evf fit|validate|test`` are LightningCLI subcommands driven by the YAML files in ``experiments/``;
the other commands live in ``evf/commands/<name>.py`` (each with a ``main(argv)``), imported by name only
when used so ``evf --help`` stays fast. ``evf prepare`` is dataset-specific and lives with the datasets
(``datamodules/prepare.py``): the ``evf`` package itself never imports ``datamodules``.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from evf.errors import UserError, is_user_error, one_line

LIGHTNING_COMMANDS = ("fit", "validate", "test")
COMMANDS = {
    "predict": ("evf.commands.predict", "segment an image with one or more text prompts"),
    "sweep": ("evf.commands.sweep", "run experiment files x seeds and write the results table"),
    "table": ("evf.commands.table", "rebuild the results table from finished runs"),
    "prepare": ("datamodules.prepare", "check a dataset folder or run a dataset pre-pass"),
    "cache": ("evf.commands.cache", "precompute frozen SAM image embeddings of a split"),
    "attention": ("evf.commands.attention", "save BEiT-3 attention heatmaps (paper Fig.8)"),
    "predict-video": ("evf.commands.predict_video", "segment and track text-prompted objects through a video (SAM-2)"),
    "export": ("evf.commands.export", "export a model as ONNX graphs for onnxruntime (evf.deploy)"),
}


def usage() -> str:
    lines = ["usage: evf <command> [options]   (evf <command> --help for details)", "", "commands:"]
    width = max(map(len, [*LIGHTNING_COMMANDS, *COMMANDS]))
    lines += [f"  {c:<{width}} LightningCLI: {c} a model from YAML (experiments/*.yaml)" for c in LIGHTNING_COMMANDS]
    lines += [f"  {c:<{width}} {help_}" for c, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def fail(message: str) -> int:
    print(f"evf: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("EVF_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command = argv[0]
    try:
        if command in LIGHTNING_COMMANDS:
            from evf.lightning_cli import run_lightning_cli

            run_lightning_cli(argv)
            return 0
        if command not in COMMANDS:
            raise UserError(f"unknown command {command!r}; run 'evf --help'")
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(argv[1:]) or 0)
    except SystemExit as exc:  # argparse/jsonargparse already printed their one-line message
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGINT: exit 130 (128 + SIGINT), as shells report it
        if debug:
            raise
        fail(str(exc) or "interrupted")
        return 130
    except Exception as exc:
        # Only bad input becomes one line (evf.errors.is_user_error); anything else is a bug and keeps its traceback.
        if debug or not is_user_error(exc):
            raise
        return fail(one_line(exc))


__all__ = ["COMMANDS", "LIGHTNING_COMMANDS", "UserError", "fail", "main", "one_line", "usage"]

if __name__ == "__main__":  # `python -m evf.cli`, how `evf sweep` starts its runs
    sys.exit(main())
