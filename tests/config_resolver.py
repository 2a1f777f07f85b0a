"""Resolve experiment YAML the way ``evf fit --print_config`` does, with one parser for many files.

Building LightningCLI's parser (jsonargparse reading every class signature) costs about twice as much as
parsing a config with it; tests that resolve dozens of experiment files share one parser through this class.
``test_shared_parser_resolves_like_print_config`` (tests/test_experiments.py) checks the two agree.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from evf.lightning_cli import CLI_KWARGS, EvfCLI


class ParseOnlyCLI(EvfCLI):
    """``EvfCLI`` with ``run=False`` that parses and builds nothing."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:  # resolving a config must not reseed the test process
        pass


class ParsedCommand(ParseOnlyCLI):
    """``evf fit|validate|test ...`` parsed as the command would parse it (``run=True``), then not run."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


class ConfigResolver:
    def __init__(self, first: Sequence[Path]):
        self.cli = ParseOnlyCLI(**CLI_KWARGS, args=config_args(first), run=False, save_config_callback=None)

    def __call__(self, *configs: Path) -> dict:
        parser = self.cli.parser
        dumped = parser.dump(parser.parse_args(config_args(configs)), skip_none=False, skip_validation=True)  # parse_args validated it
        return yaml.load(dumped, Loader=yaml.CSafeLoader)


def config_args(configs: Sequence[Path]) -> list[str]:
    return [a for c in configs for a in ("--config", str(c))]
