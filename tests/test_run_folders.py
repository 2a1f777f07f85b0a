"""Run folders never mix two runs: one process per --run_dir (resuming after a crash still works), a test
run writes its metrics only into its own folder, and prediction files of different test sets never collide."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

from evf.cli import main as evf_main
from evf.lightning_cli import prediction_file_name
from tests.lock_helpers import hold_lock, kill
from tests.tiny_artifacts import write_fit_config

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_fit_config(tmp_path_factory.mktemp("fit"))


def test_second_process_on_a_run_dir_is_refused_and_a_crashed_run_resumes(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert evf_main(["fit", "--config", str(config), "--run_dir", str(run), "--trainer.max_steps", "2"]) == 0
    assert not (run / ".evf.lock").exists()  # released when the command ends
    resume = ["fit", "--config", str(config), "--run_dir", str(run), "--ckpt_path", "last", "--trainer.max_steps", "4"]

    holder = hold_lock(run / ".evf.lock")  # a live process using the folder (another `evf fit`, a sweep's run ...)
    try:
        before = snapshot(run)
        capsys.readouterr()
        assert evf_main(resume) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith(f"evf: error: run folder {run} is in use by pid {holder.pid} "
                                                           f"on host {socket.gethostname()} (")
        assert str(run / ".evf.lock") in error
        assert snapshot(run) == before  # nothing written: no config.yaml, log or checkpoint of the refused run
    finally:
        kill(holder)  # a crash: its lock file stays behind

    assert evf_main(resume) == 0  # the crashed holder's lock is broken, the run resumes from last.ckpt
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not (run / ".evf.lock").exists()


def test_a_test_run_writes_metrics_only_into_its_own_folder(tiny_run, tmp_path, capsys):
    _, checkpoint, run_config = tiny_run  # a fit's run folder (shared: it must stay as it is)
    run = run_config.parent
    saved = yaml.safe_load(run_config.read_text())
    assert saved["metrics_file"] is None  # no path into this run for later runs to inherit
    before = snapshot(run)
    checkpoint = str(checkpoint)
    test_sets = json.dumps([{"name": "refcoco/val", "seed": 1}, {"name": "refcoco+/val", "seed": 2}])

    retest = tmp_path / "retest"
    assert evf_main(["test", "--config", str(run_config), "--run_dir", str(retest), "--ckpt_path", checkpoint,
                     "--test_sets", test_sets, "--save_predictions", "true"]) == 0
    assert snapshot(run) == before
    assert json.loads((retest / "metrics.json").read_text())["checkpoint"] == checkpoint
    predictions = sorted(p.name for p in (retest / "predictions").iterdir())
    assert predictions == ["refcoco+_val.jsonl", "refcoco_val.jsonl"]  # both kept: they used to share one name
    assert (retest / "predictions" / predictions[0]).read_text() != (retest / "predictions" / predictions[1]).read_text()

    # a config.yaml saved before this fix records the run's metrics file: ignored, with a warning
    old_style = tmp_path / "old_config.yaml"
    old_style.write_text(yaml.safe_dump({**saved, "metrics_file": str(run / "metrics.json")}))
    with pytest.warns(UserWarning, match=f"metrics_file {run / 'metrics.json'} is outside --run_dir"):
        assert evf_main(["test", "--config", str(old_style), "--run_dir", str(tmp_path / "again"), "--ckpt_path", checkpoint]) == 0
    assert snapshot(run) == before and (tmp_path / "again" / "metrics.json").is_file()

    duplicate = json.dumps([{"name": "x/val"}, {"name": "x/val", "seed": 2}])
    capsys.readouterr()
    assert evf_main(["test", "--config", str(run_config), "--run_dir", str(tmp_path / "dup"),
                     "--ckpt_path", checkpoint, "--test_sets", duplicate]) == 2
    assert "test_sets: two entries are named 'x/val'" in capsys.readouterr().err


def experiment_test_set_names() -> dict[str, list[str]]:
    """Per experiment file, the name each of its ``test_sets`` entries is reported (and saved) under."""
    names = {}
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        entries = (yaml.safe_load(path.read_text()) or {}).get("test_sets") or []
        if entries:
            names[str(path.relative_to(REPO))] = [
                e.get("name") or f"{e.get('dataset', 'synthetic')}/{e.get('test_split', 'test')}" for e in entries]
    return names


def test_prediction_file_names_are_one_to_one():
    per_file = experiment_test_set_names()
    assert "experiments/eval/refcoco.yaml" in per_file and len(per_file["experiments/eval/refcoco.yaml"]) == 8
    for path, names in per_file.items():
        assert len(set(map(prediction_file_name, names))) == len(set(names)), path
    tricky = ["refcoco/val", "refcoco+/val", "refcoco_val", "refcoco%5Fval", "refcoco%2Fval", "a/b/c", "a_b/c", "a/b_c",
              ".hidden", "", "/", "_", "%", "ü/val", "u\u0308/val", "a b/val", "a:b/val", "../../etc/passwd", "..", "."]
    everything = sorted({n for names in per_file.values() for n in names} | set(tricky))
    files = [prediction_file_name(n) for n in everything]
    assert len(set(files)) == len(everything)
    assert all("/" not in f and not f.startswith(".") and f.endswith(".jsonl") for f in files)
    assert prediction_file_name("refcoco+/testA") == "refcoco+_testA.jsonl"
    assert prediction_file_name("synthetic/test") == "synthetic_test.jsonl"

