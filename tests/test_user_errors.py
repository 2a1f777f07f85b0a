"""Issue 14 §4: the inputs that still printed tracebacks (or a wrong line), and the rule that only bad input
becomes one line: a plain RuntimeError/ValueError from training code keeps its traceback.

docs/errors.md quotes each message; keep the two in step.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here, its log handler writes to the session's stderr, not a closed capsys one)
import pytest
import torch

from evf.cli import main as evf
from evf.errors import UserError, first_line, is_user_error, one_line
from tests.cli_helpers import assert_one_line_error


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: a failed command must leave it exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails_in_one_line(capsys, args, folder: Path, *needles: str) -> str:
    before = tree(folder)
    line = assert_one_line_error(evf(args), capsys.readouterr().err, *needles)
    assert tree(folder) == before  # nothing written, nothing left behind
    return line


def predict(checkpoint, work: Path, *prompts, extra=()) -> list[str]:
    args = ["predict", "--checkpoint", str(checkpoint), "--image", str(work / "image.png"), "--out", str(work / "out")]
    return args + [a for p in prompts for a in ("--prompt", p)] + list(extra)


# -- prompts --------------------------------------------------------------------------------------
def test_a_prompt_with_a_byte_that_is_not_utf8(release, work, capsys):
    # Python hands argv bytes that are not UTF-8 on as lone surrogates: b"caf\xe9" arrives as "caf\udce9"
    line = fails_in_one_line(capsys, predict(release, work, "the square", "caf\udce9"), work)
    assert line == "evf: error: --prompt #2 is not UTF-8 text (bad byte 0xe9 at offset 3)"
    args = ["attention", "--checkpoint", str(release), "--image", str(work / "image.png"), "--out", str(work / "out"),
            "--prompt", "le carr\udce9"]
    assert fails_in_one_line(capsys, args, work).endswith("--prompt is not UTF-8 text (bad byte 0xe9 at offset 7)")


# -- release folders: config.json -----------------------------------------------------------------
TINY = {"architectures": ["EvfSamModel"], "mm_extractor_scale": "tiny", "sam_scale": "tiny"}


@pytest.mark.parametrize("content, needles", [
    ({**TINY, "sam_scale": ["tiny"]}, ['unsupported sam_scale ["tiny"] (a JSON array) for EvfSamModel', "known: ['base'"]),
    ([TINY], ["expected a JSON object of settings, got [{"]),
    ({**TINY, "architectures": [["EvfSamModel"]]}, ['"architectures" must be a list of class names', '[["EvfSamModel"]]']),
    ({**TINY, "architectures": "EvfSamModel"}, ['"architectures" must be a list of class names such as ["EvfSamModel"]',
                                                'got "EvfSamModel" (a JSON string)']),
    ({**TINY, "mm_extractor_scale": 7}, ["unsupported mm_extractor_scale 7 (a JSON number)"]),
    ('{"architectures": ["EvfSamModel"], ', ["cannot read", "not valid JSON (Expecting property name"]),
    (b'{"sam_scale": "tin\xff"}', ["cannot read", "not valid JSON ('utf-8' codec can't decode byte 0xff"]),
], ids=["sam_scale-list", "top-level-list", "architectures-nested-list", "architectures-string", "mm_scale-number",
        "invalid-json", "not-utf8"])
def test_release_config_json_of_the_wrong_shape(release, work, capsys, content, needles):
    folder = shutil.copytree(release, work / "release")
    data = content if isinstance(content, (str, bytes)) else json.dumps(content)
    (folder / "config.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    line = fails_in_one_line(capsys, predict(folder, work, "x"), work, *needles)
    assert f"{folder / 'config.json'}" in line


# -- YAML configs ---------------------------------------------------------------------------------
BAD_YAML = {
    "syntax": (b"model:\n  lr: [1, 2\n", "not valid YAML: expected ',' or ']', but got '<stream end>' (line 3, column 1)"),
    "top-level-list": (b"- model\n- data\n", "expected a mapping of sections (model:, data:, trainer: ...), got a list"),
    "not-utf8": (b"model:\n  lr: 1.0e-3 # caf\xe9\n", "not UTF-8 text (bad byte at offset 25)"),
}


@pytest.mark.parametrize("command, kind", [("fit", kind) for kind in BAD_YAML] + [
    (command, "syntax") for command in ("validate", "test", "predict", "cache")] + [("predict", "top-level-list")])
def test_a_yaml_config_that_cannot_be_read_is_named(work, capsys, command, kind):
    content, message = BAD_YAML[kind]
    bad = work / "bad.yaml"
    bad.write_bytes(content)
    if command == "predict":
        torch.save({"state_dict": {}}, work / "run.ckpt")  # read first; the config is read next
        args = predict(work / "run.ckpt", work, "x", extra=["--config", str(bad)])
    elif command == "cache":
        args = ["cache", "--config", str(bad), "--out", str(work / "cache")]
    else:
        args = [command, "--config", str(bad)]
    line = fails_in_one_line(capsys, args, work, str(bad), message)
    assert line.startswith(f"evf: error: cannot read config {bad}: " if kind != "top-level-list" else f"evf: error: config {bad}: ")


def test_a_config_key_error_names_the_config_file(fit_config, work, capsys):
    bad = work / "typo.yaml"
    bad.write_text(fit_config.read_text().replace("  lr: 1.0e-3", "  lr: fast"))
    line = fails_in_one_line(capsys, ["fit", "--config", str(bad)], work, f"config {bad}: ", "model.lr")
    assert line.startswith(f"evf: error: config {bad}: Parser key \"model.lr\"")
    # a bad value given on the command line is the command line's, not the file's
    line = fails_in_one_line(capsys, ["fit", "--config", str(fit_config), "--trainer.max_steps", "many"], work, "trainer.max_steps")
    assert str(fit_config) not in line


def test_a_section_that_is_not_a_mapping_is_refused_even_under_overrides(fit_config, work, capsys):
    bad = work / "trainer-list.yaml"
    text = fit_config.read_text()
    bad.write_text(text[: text.index("\ntrainer:")] + "\ntrainer: [1, 2]\n")
    # jsonargparse used to drop the list silently once a --trainer.* override was given, and train 1000 epochs
    args = ["fit", "--config", str(bad), "--trainer.max_steps", "1", "--trainer.default_root_dir", str(work / "run")]
    line = fails_in_one_line(capsys, args, work)
    assert line == f"evf: error: config {bad}: 'trainer' must be a mapping of arguments, got [1, 2]"


# -- checkpoints carrying code ----------------------------------------------------------------------
class OpensAFile:
    """Unpickling it would call ``open(sentinel, "w")``: harmless, but visible if it ever ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


@pytest.mark.parametrize("command", ["validate", "test", "fit", "predict"])
def test_a_checkpoint_that_holds_code_is_refused_in_one_line(fit_config, work, capsys, command):
    sentinel = work / "pwned"
    evil = work / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": OpensAFile(sentinel)}, evil)
    if command == "predict":
        args = predict(evil, work, "x", extra=["--config", str(fit_config)])
    else:
        args = [command, "--config", str(fit_config), "--ckpt_path", str(evil)]
    line = fails_in_one_line(capsys, args, work)
    assert line == (f"evf: error: refused checkpoint {evil}: it holds code, not only weights and plain data "
                    "(it names the global 'io.open'); evf never runs code from a checkpoint")
    assert "weights_only" not in line and not sentinel.exists()


def test_a_file_that_is_not_a_lightning_checkpoint(fit_config, work, capsys):
    plain = work / "weights.ckpt"
    torch.save({"w": torch.zeros(2)}, plain)
    fails_in_one_line(capsys, ["validate", "--config", str(fit_config), "--ckpt_path", str(plain)], work,
                      f"{plain} is not a Lightning checkpoint (no 'state_dict')")


# -- results tables -------------------------------------------------------------------------------
def finished_run(folder: Path, metrics: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder / "metrics.json"


def test_table_with_an_unknown_metric_lists_the_metrics(work, capsys):
    finished_run(work / "results/a/seed0", {"test": {"refcoco/val": {"cIoU": 0.5, "gIoU": 0.4}}, "seed": 0})
    line = fails_in_one_line(capsys, ["table", str(work / "results"), "--metric", "bogus"], work)
    assert line == ("evf: error: unknown metric 'bogus'; choose from cIoU, gIoU, P@0.5, P@0.6, P@0.7, P@0.8, P@0.9, "
                    "no_target_acc, N_acc, T_acc")
    experiment = work / "exp.yaml"
    experiment.write_text("model: {}\n")
    fails_in_one_line(capsys, ["sweep", str(experiment), "--out", str(work / "sweep"), "--metric", "ciou"], work,
                      "unknown metric 'ciou'")  # refused before any run starts


@pytest.mark.parametrize("metrics, needle", [
    ([0.5], "expected a JSON object, got a list"),
    ({"test": [0.5]}, '"test" must map each test set to its scores'),
    ({"test": {"refcoco/val": {"cIoU": "high"}}}, "refcoco/val cIoU is 'high', not a number"),
    ("{not json", "cannot read"),
])
def test_a_metrics_file_of_the_wrong_shape_is_named(work, capsys, metrics, needle):
    path = finished_run(work / "results/a/seed0", metrics)
    if isinstance(metrics, str):
        path.write_text(metrics)
    fails_in_one_line(capsys, ["table", str(work / "results")], work, str(path), needle)


def test_the_table_metrics_are_the_ones_evf_computes():
    from evf.metrics import ReferringSegmentationMetrics
    from evf.results import METRICS

    metrics = ReferringSegmentationMetrics()
    metrics.update([torch.ones(4, 4, dtype=torch.bool)], [torch.ones(4, 4, dtype=torch.bool)])
    assert set(METRICS) == set(metrics.compute()) - {"samples"}


# -- only bad input becomes one line -------------------------------------------------------------
@pytest.mark.parametrize("command, hook, error", [("fit", "training_step", RuntimeError),
                                                  ("validate", "validation_step", ValueError)])
def test_a_bug_in_training_code_keeps_its_traceback(fit_config, tmp_path, monkeypatch, capsys, command, hook, error):
    from evf.module import EVFSAMModule

    def broken(self, batch, batch_idx):
        raise error("a bug in a step, not bad input")

    monkeypatch.setattr(EVFSAMModule, hook, broken)
    with pytest.raises(error, match="a bug in a step"):  # re-raised by evf.cli.main: Python prints the traceback
        evf([command, "--config", str(fit_config), "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path)])
    assert "evf: error" not in capsys.readouterr().err


@pytest.mark.parametrize("override, needle", [
    (["--trainer.strategy", "nonsense"], "You selected an invalid strategy name: `strategy='nonsense'`"),
    (["--data.init_args.batch_size", "0"], "batch_size must be a positive number, got 0"),
    (["--model.model.init_args.sam.init_args.variant", "vit_x"], "unknown SAM-1 variant 'vit_x'"),
])
def test_a_value_a_constructor_refuses_is_one_line(fit_config, tmp_path, capsys, override, needle):
    code = evf(["fit", "--config", str(fit_config), "--trainer.default_root_dir", str(tmp_path / "run"), *override])
    assert_one_line_error(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "run").exists()


def test_which_errors_are_bad_input():
    assert is_user_error(UserError("x")) and is_user_error(FileNotFoundError("config not found: x.yaml"))
    assert is_user_error(OSError(28, "No space left on device", "/data/run/last.ckpt"))  # names a file
    assert not is_user_error(OSError("no file named"))
    for bug in (RuntimeError("CUDA error"), ValueError("bad shape"), KeyError("k"), TypeError("t")):
        assert not is_user_error(bug)
    from datamodules.common import DatasetError
    from evf.checkpoint import CheckpointError
    from evf.config_errors import ConfigError
    from evf.io import ImageReadError
    from evf.safe_pickle import UnsafePickleError

    for cls, base in ((ConfigError, ValueError), (CheckpointError, RuntimeError), (ImageReadError, ValueError),
                      (DatasetError, ValueError), (UnsafePickleError, ValueError)):
        assert issubclass(cls, UserError) and issubclass(cls, base)  # callers catching the old base still work


def test_one_line_messages():
    worker = ("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              '  File "x.py", line 1, in f\ndatamodules.common.DatasetError: /d/refs(unc).p: ref 3 has no sentences')
    assert one_line(RuntimeError(worker)) == "/d/refs(unc).p: ref 3 has no sentences"
    assert one_line(RuntimeError("Error(s) in loading state_dict for M:\n\tsize mismatch for w")) == \
        "Error(s) in loading state_dict for M: size mismatch for w"
    assert first_line(ValueError("\n  first  \nsecond")) == "first" and first_line(KeyError()) == "KeyError"
    assert pickle.loads(pickle.dumps(UserError("x"))).args == ("x",)


def test_help_lists_every_command_with_aligned_descriptions(capsys):
    from evf.cli import COMMANDS, LIGHTNING_COMMANDS, main

    assert main(["--help"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [row.split()[0] for row in rows] == [*LIGHTNING_COMMANDS, *COMMANDS]
    columns = {len(row) - len(row[2:].split(" ", 1)[1].lstrip()) for row in rows}  # where each description starts
    assert len(columns) == 1, rows
