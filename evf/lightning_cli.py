"""LightningCLI for ``evf fit|validate|test``: YAML in, every plugin chosen by ``class_path``.

Extra options (on top of LightningCLI's):
  --run_dir DIR         everything of one run under DIR: config.yaml, TensorBoard events, csv/metrics.csv,
                        checkpoints/ (last.ckpt, best-*.ckpt), metrics.json, predictions/*.jsonl.
  --test_after_fit      after fit, test the best (or last) checkpoint.
  --test_sets [...]     evaluate on several datasets/splits, each a datamodule override (see docs/training.md).
  --metrics_file FILE   test metrics as JSON (default DIR/metrics.json with --run_dir); written atomically.
                        With --run_dir it must lie inside DIR: a run never writes into another run's folder.
  --save_predictions    per-sample JSONL (id, sentence, I, U, IoU) per test set (needs --run_dir).

The run folder is locked while the command runs (DIR/.evf.lock, see evf/locks.py): a second process on the
same DIR stops with one line naming the first; the lock of a crashed run is broken on the next start.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import re
import sys
import warnings
import zipfile
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from evf.checkpoint import CheckpointError, read_checkpoint
from evf.config_errors import (
    ConfigError,
    building_from_config,
    config_file_arguments,
    explain_config_error,
    name_config_files,
    parser_keys,
    read_yaml_file,
)
from evf.datamodule import RefSegDataModule
from evf.io import write_text_atomic
from evf.locks import is_rank_zero, run_dir_lock
from evf.module import EVFSAMModule
from evf.registry import import_class

TEST_SET_KEYS = ("name", "class_path", "init_args")


def format_metrics(stage: str, metrics: dict) -> str:
    def get(name):
        value = metrics.get(f"{stage}/{name}", metrics.get(name))
        return float(value) if value is not None else float("nan")

    samples = get("samples")
    return (f"{stage}: cIoU={get('cIoU'):.4f} gIoU={get('gIoU'):.4f} "
            f"P@0.5={get('P@0.5'):.4f} samples={0 if math.isnan(samples) else int(samples)}")


def default_loggers(root: str, versioned: bool) -> list[Namespace]:
    """TensorBoard (first, so ``trainer.log_dir`` is its folder) + CSV. With a run dir, no version folders."""
    version = {} if versioned else {"version": ""}
    return [
        Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                  init_args=Namespace(save_dir=root, name="tb" if versioned else "", **version)),
        Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                  init_args=Namespace(save_dir=root, name="csv", **version)),
    ]


SAFE_FILE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.+-")


def prediction_file_name(name: str) -> str:
    """Test set name -> ``<file>.jsonl``, one-to-one: ``/`` becomes ``_``; every other character outside
    ``A-Za-z0-9.+-`` (``_`` and ``%`` included) becomes ``%XX`` per UTF-8 byte, as does a leading dot
    (no hidden files).
    ``refcoco+/val`` -> ``refcoco+_val.jsonl``, ``refcoco/val`` -> ``refcoco_val.jsonl``,
    ``refcoco_val`` -> ``refcoco%5Fval.jsonl``."""
    def escape(index: int, char: str) -> str:
        if char == "/":
            return "_"
        if char in SAFE_FILE_CHARACTERS and not (index == 0 and char == "."):
            return char
        return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))

    # a lone "%" (never produced otherwise: "%" itself becomes "%25") stands for the empty name: no hidden ".jsonl"
    return ("".join(escape(i, c) for i, c in enumerate(name)) or "%") + ".jsonl"


def check_checkpoint_file(ckpt_path: str | None) -> set[str]:
    """A truncated, corrupt or code-carrying ``--ckpt_path`` file fails here, naming the file, before anything is
    built (Lightning reads the file's hyper-parameters first, and its errors are tracebacks).

    Lightning checkpoints are torch zip archives, whose index sits at the end of the file, so a cheap
    zip check catches a copy that was cut off; the file is then unpickled as evf reads every checkpoint
    (``weights_only=True``, memory-mapped: no tensor data is read). "last", "best" and missing files are
    left to Lightning.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return set()
    if not zipfile.is_zipfile(ckpt_path):
        raise CheckpointError(f"cannot read checkpoint {ckpt_path}: truncated or corrupted (not a complete torch zip archive)")
    checkpoint = read_checkpoint(ckpt_path, mapped=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt_path} is not a Lightning checkpoint (no 'state_dict')")
    return set(checkpoint)


class EvfCLI(LightningCLI):
    metrics_path: str | None = None  # where test metrics go (set from --metrics_file / --run_dir)
    config_files: tuple[str, ...] = ()  # the --config files, named by configuration errors

    def __init__(self, *args, locks: contextlib.ExitStack | None = None, **kwargs):
        self.locks = locks if locks is not None else contextlib.ExitStack()  # held until the command ends
        argv = kwargs.get("args", sys.argv[1:])
        first = argv[0] if isinstance(argv, list) and argv else None
        self.only_subcommand = first if kwargs.get("run", True) and first in LightningCLI.subcommands() else None
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """Only the subcommand being run: each subcommand's parser reads every Trainer, model and datamodule
        signature again (about 0.1 s apiece), and ``evf fit|validate|test`` runs exactly one."""
        every = LightningCLI.subcommands()
        return {self.only_subcommand: every[self.only_subcommand]} if self.only_subcommand else every

    def parse_arguments(self, parser, args) -> None:
        # one line naming the bad key (+ the nearest valid one) and the --config file(s) instead of jsonargparse's
        # usage dump (a file that is not YAML was refused before, by run_lightning_cli)
        argv = sys.argv[1:] if args is None else args if isinstance(args, list) else []
        self.config_files = tuple(config_file_arguments(argv))
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as exc:
            explained = explain_config_error(str(exc), parser_keys(parser))
            raise ConfigError(name_config_files(explained, str(exc), argv)) from None
        subcommand = self.config.get("subcommand")
        if subcommand:  # before Lightning reads the checkpoint's hyper-parameters
            self.checkpoint_keys = check_checkpoint_file(self.config[subcommand].get("ckpt_path"))

    def _parse_ckpt_path(self) -> None:
        # Lightning unpickles the whole checkpoint once more only to look for saved hyper-parameters, which evf
        # never saves (a run is rebuilt from its config.yaml); a file from elsewhere that has some still gets read
        if "hyper_parameters" in getattr(self, "checkpoint_keys", {"hyper_parameters"}):
            super()._parse_ckpt_path()

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, evaluate the best (or last) checkpoint on the test split(s)")
        parser.add_argument("--test_sets", type=list[dict[str, Any]] | None, default=None,
                            help="test on several datasets/splits: list of {name, class_path?, init_args?, <init arg>: value}")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="one folder for config, logs, checkpoints and metrics of this run")
        parser.add_argument("--metrics_file", type=str | None, default=None,
                            help="write test metrics here as JSON (default: RUN_DIR/metrics.json; with --run_dir "
                                 "only a path inside RUN_DIR is used)")
        parser.add_argument("--save_predictions", type=bool, default=False,
                            help="write per-sample results to RUN_DIR/predictions/<test set>.jsonl")

    def instantiate_classes(self) -> None:
        where = f"config {' + '.join(self.config_files)}" if self.config_files else None
        with building_from_config(where):  # a value the model, datamodule or trainer refuses: one line
            super().instantiate_classes()

    # -- config rewriting (same on every rank, before anything is built) ----------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        trainer = cfg.trainer
        if not isinstance(trainer, Namespace):  # jsonargparse lets a YAML "trainer: [1, 2]" replace the whole group
            where = f"config {' + '.join(self.config_files)}: " if self.config_files else ""
            raise ConfigError(f"{where}'trainer' must be a mapping of arguments, got {trainer!r:.60}")
        run_dir = cfg.get("run_dir")
        if run_dir:
            if is_rank_zero():  # before anything is written there; the other ranks write under rank 0's lock
                self.locks.enter_context(run_dir_lock(run_dir))
            trainer.default_root_dir = run_dir
        self.metrics_path = own_metrics_file(cfg.get("metrics_file"), run_dir) if run_dir else cfg.get("metrics_file")
        if run_dir and self.metrics_path != cfg.get("metrics_file"):
            cfg.metrics_file = None  # the saved config.yaml records no path into this run for later runs to inherit
        if trainer.logger is None or trainer.logger is True or (run_dir and trainer.logger is not False):
            trainer.logger = default_loggers(run_dir or trainer.default_root_dir or ".", versioned=not run_dir)
        if run_dir:  # checkpoints where `--ckpt_path last` finds them, always with a last.ckpt to resume from
            checkpoints = [c for c in trainer.callbacks or [] if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
            if not checkpoints and trainer.enable_checkpointing is not False:
                checkpoints = [Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint", init_args=Namespace())]
                trainer.callbacks = [*(trainer.callbacks or []), *checkpoints]
            for callback in checkpoints:
                callback.init_args.dirpath = str(Path(run_dir) / "checkpoints")
                callback.init_args.save_last = callback.init_args.get("save_last") or True

    # -- test: one or several test sets, metrics file ---------------------------------------
    def test_datamodules(self) -> list[tuple[str, RefSegDataModule]]:
        cfg = self.config[self.subcommand]
        entries = cfg.get("test_sets")
        if not entries:
            return [(test_set_name(self.datamodule, {}), self.datamodule)]
        named = [e.get("name") for e in entries if e.get("name")]
        if len(set(named)) != len(named):
            duplicate = next(n for n in named if named.count(n) > 1)
            raise ConfigError(f"test_sets: two entries are named {duplicate!r}; their metrics and predictions would overwrite each other")
        data_spec = cfg.data
        base_args = data_spec.init_args.as_dict() if isinstance(data_spec.init_args, Namespace) else dict(data_spec.init_args or {})
        out = []
        for entry in entries:
            overrides = {**(entry.get("init_args") or {}), **{k: v for k, v in entry.items() if k not in TEST_SET_KEYS}}
            class_path = entry.get("class_path")
            if class_path and class_path != data_spec.class_path:
                datamodule = build_datamodule(import_class(class_path), overrides)
            else:
                datamodule = build_datamodule(type(self.datamodule), {**base_args, **overrides})
            out.append((entry.get("name") or test_set_name(datamodule, overrides), datamodule))
        names = [name for name, _ in out]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"test_sets: two entries are both {duplicate!r}; give them distinct 'name's")
        return out

    def test(self, model=None, datamodule=None, ckpt_path=None, **kwargs) -> dict[str, dict[str, float]]:
        cfg = self.config[self.subcommand]
        model = model or self.model
        sets = self.test_datamodules()
        results = {}
        for name, dm in sets:
            if cfg.get("save_predictions") and cfg.get("run_dir"):
                model.predictions_jsonl = str(Path(cfg.run_dir) / "predictions" / prediction_file_name(name))
            kwargs.pop("datamodule", None)
            self.trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, **kwargs)
            results[name] = dict(model.test_results)
            if self.trainer.is_global_zero:
                label = "test" if len(sets) == 1 and not cfg.get("test_sets") else f"test[{name}]"
                print(format_metrics(label, results[name]), flush=True)
        self.write_metrics(results, ckpt_path)
        return results

    def write_metrics(self, results: dict, ckpt_path) -> None:
        cfg = self.config[self.subcommand]
        if not self.metrics_path or not self.trainer.is_global_zero:
            return
        results = {name: {k: None if math.isnan(v) else v for k, v in m.items()} for name, m in results.items()}  # NaN -> null
        record = {"test": results, "seed": cfg.get("seed_everything"), "checkpoint": str(ckpt_path) if ckpt_path else None,
                  "global_step": int(self.trainer.global_step), "subcommand": self.subcommand}
        write_text_atomic(self.metrics_path, json.dumps(record, indent=2) + "\n")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        callback = self.trainer.checkpoint_callback
        ckpt = getattr(callback, "best_model_path", "") or None if callback is not None else None
        self.test(self.model, ckpt_path=ckpt)

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            print(format_metrics("val", self.trainer.callback_metrics), flush=True)


def build_datamodule(cls: type, args: dict[str, Any]) -> RefSegDataModule:
    """Constructor arguments go to ``cls``; other keys set attributes every datamodule has (e.g.
    ``test_split`` of a datamodule whose constructor does not take it)."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    datamodule = cls(**{k: v for k, v in args.items() if k in params or takes_any})
    for key, value in args.items():
        if key not in params and not takes_any:
            if not hasattr(datamodule, key):
                raise ConfigError(f"test set: {cls.__name__} has no argument or attribute {key!r}")
            setattr(datamodule, key, value)
    return datamodule


def test_set_name(datamodule: RefSegDataModule, overrides: dict) -> str:
    """``<dataset>/<split>``: the datamodule's ``dataset`` argument (e.g. refcoco+) or its class name."""
    dataset = overrides.get("dataset") or getattr(datamodule, "dataset_name", None)
    if not isinstance(dataset, str):
        dataset = re.sub(r"(Ref)?DataModule$", "", type(datamodule).__name__).lower() or "data"
    return f"{dataset}/{datamodule.test_split}"


def own_metrics_file(metrics_file: str | None, run_dir: str) -> str:
    """Where a run in ``run_dir`` writes its test metrics: ``run_dir/metrics.json``, or ``metrics_file`` if it
    lies inside ``run_dir``. A path outside it (typically another run's, recorded in the config.yaml that
    run saved) is ignored with a warning: a run never overwrites another run's metrics."""
    own = Path(run_dir) / "metrics.json"
    if metrics_file is None or Path(metrics_file) == own:
        return str(own)
    if Path(run_dir).resolve() in Path(metrics_file).resolve().parents:
        return str(metrics_file)
    if is_rank_zero():  # once per launch, not once per process
        warnings.warn(f"metrics_file {metrics_file} is outside --run_dir {run_dir} (a config.yaml saved by another run records "
                      f"that run's file): writing the test metrics to {own} instead", UserWarning, stacklevel=2)
    return str(own)


# How every EvfCLI is built: ``evf fit|validate|test`` here, ``evf.load`` (evf/loading.py) with run=False.
# "omegaconf+" resolves ``${...}`` interpolations once over the merged config (across --config files); plain
# "omegaconf" parsed every value twice (PyYAML, then OmegaConf). The module saves no hyperparameters (a run is
# reloaded from its config.yaml), so Lightning's load_from_checkpoint support would only dump the config once more.
CLI_KWARGS = {"model_class": EVFSAMModule, "datamodule_class": RefSegDataModule, "subclass_mode_data": True,
              "load_from_checkpoint_support": False,
              "parser_kwargs": {"parser_mode": "omegaconf+", "exit_on_error": False}}


def check_config_files(argv: Sequence[str]) -> None:
    """Each ``--config`` file is a YAML mapping whose ``model``/``trainer`` are mappings (jsonargparse's message
    would not name the file that is not YAML, and it drops such a value silently once ``--trainer.x`` is given)."""
    for path in config_file_arguments(argv):
        data = read_yaml_file(path)
        for group in ("model", "trainer"):
            if data.get(group) is not None and not isinstance(data[group], dict):
                raise ConfigError(f"config {path}: '{group}' must be a mapping of arguments, got {data[group]!r:.60}")


def run_lightning_cli(argv: Sequence[str]) -> EvfCLI:
    check_config_files(argv)
    torch.set_float32_matmul_precision("high")
    # LightningCLI warns when given args that merely repeat the command line: pass None then.
    args = None if list(argv) == sys.argv[1:] else list(argv)
    with contextlib.ExitStack() as locks:  # the run folder's lock, released however the command ends
        return EvfCLI(**CLI_KWARGS, args=args, locks=locks, save_config_kwargs={"overwrite": True})
