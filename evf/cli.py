"""``evf`` command line.

``evf fit|validate|test`` are LightningCLI subcommands driven by the YAML files in ``experiments/``;
the other commands live in ``evf/commands/<name>.py`` (each with a ``main(argv)``), imported only
when used so ``evf --help`` stays fast.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test")
COMMANDS = {
    "predict": ("evf.commands.predict", "segment an image with one or more text prompts"),
    "sweep": ("evf.commands.sweep", "run experiment files x seeds and write the results table"),
    "table": ("evf.commands.table", "rebuild the results table from finished runs"),
    "prepare": ("evf.commands.prepare", "check a dataset folder or run a dataset pre-pass"),
    "cache": ("evf.commands.cache", "precompute frozen SAM image embeddings of a split"),
    "attention": ("evf.commands.attention", "save BEiT-3 attention heatmaps (paper Fig.8)"),
}


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""


def usage() -> str:
    lines = ["usage: evf <command> [options]   (evf <command> --help for details)", "", "commands:"]
    lines += [f"  {c:<10} LightningCLI: {c} a model from YAML (experiments/*.yaml)" for c in LIGHTNING_COMMANDS]
    lines += [f"  {c:<10} {help_}" for c, (_, help_) in COMMANDS.items()]
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
    except (UserError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        if debug:
            raise
        return fail(one_line(exc))


def one_line(exc: BaseException) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(text) > 1 and text[0].endswith(":"):  # e.g. "Error(s) in loading state_dict for X:" + the detail
        return f"{text[0]} {text[1]}"[:400]
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    # `python -m evf.cli` (how `evf sweep` starts runs) runs this file as __main__: call the imported module's
    # main, whose UserError is the class evf's commands and evf.locks raise, so their errors stay one line
    from evf.cli import main as package_main

    sys.exit(package_main())
