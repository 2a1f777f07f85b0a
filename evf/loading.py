"""``evf.load``: one path from an official release, a Lightning checkpoint, a run folder or experiment YAML to
objects. ``evf predict``, ``evf attention``, ``evf cache``, ``evf prepare --backend x.yaml``, the notebooks and
the tests all load through it.

    loaded = evf.load("runs/quickstart")                  # run folder: its config.yaml + best (else last) checkpoint
    loaded = evf.load("runs/x/checkpoints/last.ckpt")     # a .ckpt + the run's config.yaml found beside or above it
    loaded = evf.load("weights/evf-sam")                  # official release folder (EVFSAM.from_pretrained)
    loaded = evf.load("experiments/quickstart.yaml", overrides=["data.init_args.batch_size=4"])  # untrained
    model, datamodule = loaded.model, loaded.datamodule   # EVFSAM in eval mode; the configured datamodule or None

Configs resolve exactly as in ``evf fit``: the same LightningCLI subclass (``EvfCLI``, with ``run=False``) parses
the YAML file(s) and overrides, so the same keys, defaults, ``class_path`` rules and one-line errors apply. Only
the ``model`` group (and ``data``, unless ``datamodule=False``) is built: no Trainer, logger, callback, run-folder
lock or folder. An integer ``seed_everything`` seeds the RNGs before building, as fit does (an untrained model or
a synthetic dataset then equals fit's); ``true`` or no seed leaves them alone.

Checkpoint weights are restored through the module's own Lightning hooks, as ``Trainer`` does on resume:
``on_load_checkpoint`` (restores what the checkpoint left out: frozen weights come from the config's weight
files), then ``load_state_dict`` with the module's ``strict_loading``.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lightning.pytorch import Trainer, seed_everything

from evf.checkpoint import CheckpointError, read_checkpoint
from evf.config_errors import building_from_config
from evf.errors import UserError
from evf.lightning_cli import CLI_KWARGS, EvfCLI, check_config_files
from evf.model import EVFSAM
from evf.module import EVFSAMModule

RUN_CONFIG_NAME = "config.yaml"  # what LightningCLI saves in a run's log folder
RELEASE_CONFIG_NAME = "config.json"  # what an official release folder holds
YAML_SUFFIXES = (".yaml", ".yml")
PathLike = str | Path


class Loaded(NamedTuple):
    model: EVFSAM  # in eval mode
    datamodule: Any  # the config's datamodule (not yet attached to the model), or None
    module: EVFSAMModule | None  # the LightningModule around ``model`` (None for a release folder)
    config: Any  # the resolved config (jsonargparse Namespace; None for a release folder)
    checkpoint: Path | None  # the weights file that was loaded, if any


def load(source: PathLike | Sequence[PathLike], config: PathLike | Sequence[PathLike] | None = None,
         overrides: Sequence[str] | Mapping[str, Any] = (), *, datamodule: bool = True) -> Loaded:
    """Build the model (and datamodule) that ``source`` stands for.

    ``source``: an official release folder (or its weights file), a Lightning ``.ckpt``, a run folder (one
    holding ``config.yaml``; see ``run_checkpoint`` for which checkpoint), or experiment YAML alone (a ``.yaml``
    path, or a list of YAML paths layered in order): an untrained model. ``config``: YAML file(s) layered in
    order; for a ``.ckpt`` or run folder they replace the run's ``config.yaml``, for YAML sources they follow them. ``overrides``: ``"model.lr=0.1"`` strings (as
    on the ``evf fit`` command line, ``--`` optional) or a ``{"model.lr": 0.1}`` mapping. ``datamodule=False``
    parses but does not build the ``data`` group (which may then be absent).
    """
    sources = [Path(source)] if isinstance(source, (str, Path)) else [Path(s) for s in source]
    configs = [Path(c) for c in ([] if config is None else [config] if isinstance(config, (str, Path)) else config)]
    path = sources[0]
    yaml_only = not isinstance(source, (str, Path)) or path.suffix in YAML_SUFFIXES  # an untrained model
    if not yaml_only and not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    for file in (sources if yaml_only else []) + configs:
        if not file.is_file():
            raise UserError(f"config not found: {file}")
    if yaml_only:
        return from_configs(sources + configs, overrides, datamodule)
    if is_release(path):
        if configs or overrides:
            raise UserError(f"{path} is an official release folder: it takes no config or overrides")
        return Loaded(EVFSAM.from_pretrained(path).eval(), None, None, None, path)
    if path.is_dir() and (path / RUN_CONFIG_NAME).is_file():
        return from_checkpoint(run_checkpoint(path), configs or [path / RUN_CONFIG_NAME], overrides, datamodule)
    if path.is_dir():  # neither kind of folder: from_pretrained names what is missing
        return Loaded(EVFSAM.from_pretrained(path).eval(), None, None, None, path)
    return from_checkpoint(path, configs or [find_run_config(path)], overrides, datamodule)


def is_release(path: Path) -> bool:
    """An official release folder, or a weights file inside one."""
    if path.is_dir():
        return (path / RELEASE_CONFIG_NAME).is_file()
    return path.suffix != ".ckpt" and (path.parent / RELEASE_CONFIG_NAME).is_file()


def find_run_config(ckpt: Path) -> Path:
    """``config.yaml`` of the run: LightningCLI saves it in the log dir, checkpoints go to ``<log dir>/checkpoints``."""
    for folder in (ckpt.parent, ckpt.parent.parent, ckpt.parent.parent.parent):
        if (folder / RUN_CONFIG_NAME).is_file():
            return folder / RUN_CONFIG_NAME
    raise UserError(f"no {RUN_CONFIG_NAME} found next to {ckpt} or above it; pass the run's YAML with --config")


def run_checkpoint(folder: Path) -> Path:
    """The checkpoint a run folder stands for, in ``folder/checkpoints/``: its ``best-*.ckpt`` (of several, the
    one ``last.ckpt``'s ModelCheckpoint state records as best), else ``last.ckpt``, else its only ``.ckpt``."""
    checkpoints = folder / "checkpoints"
    found = sorted(checkpoints.glob("*.ckpt")) if checkpoints.is_dir() else []
    best = [c for c in found if c.name.startswith("best")]
    if len(best) > 1:
        recorded = recorded_best(checkpoints / "last.ckpt")
        if recorded not in best:
            names = ", ".join(c.name for c in best)
            raise UserError(f"run folder {folder} has several best checkpoints ({names}) and no last.ckpt naming the "
                            "best one; pass the .ckpt to load")
        return recorded
    if best:
        return best[0]
    if (checkpoints / "last.ckpt").is_file():
        return checkpoints / "last.ckpt"
    if len(found) == 1:
        return found[0]
    what = "several checkpoints and neither best-*.ckpt nor last.ckpt" if found else "no checkpoints/*.ckpt"
    raise UserError(f"run folder {folder} has {what}; pass the .ckpt to load")


def recorded_best(last: Path) -> Path | None:
    """The best checkpoint ModelCheckpoint recorded in ``last.ckpt`` (by file name, so a moved run folder works)."""
    if not last.is_file():
        return None
    callbacks = read_checkpoint(last, mapped=True).get("callbacks") or {}
    for key, state in callbacks.items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_path"):
            return last.parent / Path(state["best_model_path"]).name
    return None


def from_checkpoint(ckpt: Path, configs: list[Path], overrides, datamodule: bool) -> Loaded:
    checkpoint = read_checkpoint(ckpt)  # before the model is built: a bad file fails fast
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt} is not a Lightning checkpoint (no 'state_dict')")
    module, data, cfg = build(configs, overrides, datamodule)
    module.on_load_checkpoint(checkpoint)  # lets the module restore what it left out (e.g. frozen weights)
    module.checkpoint_source = str(ckpt)  # named by its error if the weights do not fit
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return Loaded(module.model.eval(), data, module, cfg, ckpt)


def from_configs(configs: list[Path], overrides, datamodule: bool) -> Loaded:
    module, data, cfg = build(configs, overrides, datamodule)
    return Loaded(module.model.eval(), data, module, cfg, None)


def override_arguments(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [f"--{key.removeprefix('--')}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides: a sequence of 'key=value' strings or a mapping, not one string")
    return [o if o.startswith("--") else f"--{o}" for o in overrides]


def build(configs: list[Path], overrides, datamodule: bool):
    """``(EVFSAMModule, datamodule or None, config)`` from YAML files + overrides, resolved by ``EvfCLI``."""
    args = [a for c in configs for a in ("--config", str(c))] + override_arguments(overrides)
    check_config_files(args)
    cli = ConfigCLI(args, datamodule)
    return cli.model, cli.datamodule, cli.config


class ConfigCLI(EvfCLI):
    """``EvfCLI`` with ``run=False`` that builds the model (and datamodule) only: no Trainer, loggers, callbacks,
    run-folder lock or folders. A saved run ``config.yaml`` parses too (it holds the subcommand's own keys)."""

    def __init__(self, args: list[str], with_data: bool):
        self.with_data = with_data
        kwargs = dict(CLI_KWARGS)
        if not with_data:
            kwargs["datamodule_class"] = None  # LightningCLI then makes the 'data' group optional
        super().__init__(**kwargs, args=args, run=False, save_config_callback=None)

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        # keys of the subcommands (ckpt_path, verbose, weights_only, ...) that a run's saved config.yaml records
        known = {action.dest for action in parser._actions}
        for subcommand, skip in self.subcommands().items():
            params = set(inspect.signature(getattr(Trainer, subcommand)).parameters) - {"self"}
            fresh = params - set(skip) - known
            if fresh:
                parser.add_method_arguments(Trainer, subcommand, skip=params - fresh)
                known |= fresh

    def _set_seed(self) -> None:
        seed = self.config.get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool):
            seed_everything(seed, workers=True, verbose=False)

    def before_instantiate_classes(self) -> None:
        """Nothing of ``evf fit``'s run-folder set-up (lock, loggers, checkpoint callbacks)."""

    def instantiate_classes(self) -> None:
        cfg = self.config.clone()
        for group in ("trainer", "optimizer", "lr_scheduler", *(() if self.with_data else ("data",))):
            if group in cfg:
                del cfg[group]
        where = f"config {' + '.join(self.config_files)}" if self.config_files else "config"
        with building_from_config(where):
            built = self.parser.instantiate_classes(cfg)
        self.config_init, self.model, self.trainer = built, built.model, None
        self.datamodule = built.get("data") if self.with_data else None
