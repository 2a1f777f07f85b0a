"""`evf sweep` / `evf table`: runs x seeds -> results.md / results.csv (rows = configs, columns = dataset/split)."""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys

import pytest

from evf.cli import main as evf_main
from evf.results import build_table, load_runs, to_markdown
from tests.training_helpers import read_metrics, run_evf, write_config


def fake_run(folder, seed, values: dict[str, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    test = {column: {"cIoU": v, "gIoU": v / 2, "no_target_acc": None} for column, v in values.items()}
    (folder / "metrics.json").write_text(json.dumps({"test": test, "seed": seed}))


def test_table_from_runs_mean_std_and_average(tmp_path):
    fake_run(tmp_path / "runs/late/seed0", 0, {"refcoco/val": 0.70, "refcoco/testA": 0.74})
    fake_run(tmp_path / "runs/late/seed1", 1, {"refcoco/val": 0.72, "refcoco/testA": 0.76})
    fake_run(tmp_path / "runs/early/seed0", 0, {"refcoco/val": 0.80, "refcoco/testA": 0.82})
    (tmp_path / "sweep.json").write_text(json.dumps({"configs": ["late", "early"]}))
    assert evf_main(["table", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["config"] for r in rows] == ["late", "early"]  # the sweep's order, not alphabetical
    assert float(rows[0]["refcoco/val"]) == pytest.approx(71.0)
    assert float(rows[0]["refcoco/val std"]) == pytest.approx(statistics.stdev([70.0, 72.0]), abs=1e-4)
    assert float(rows[0]["avg"]) == pytest.approx(73.0) and rows[0]["avg n"] == "2"
    assert rows[1]["refcoco/testA n"] == "1" and float(rows[1]["refcoco/testA std"]) == 0.0
    markdown = (tmp_path / "results.md").read_text()
    assert "| config | refcoco/val | refcoco/testA | avg | seeds |" in markdown
    assert "| late | 71.0 ± 1.4 | 75.0 ± 1.4 | 73.0 ± 1.4 | 2 |" in markdown
    assert "| early | 80.0 | 82.0 | 81.0 | 1 |" in markdown
    assert evf_main(["table", str(tmp_path), "--metric", "gIoU"]) == 0
    assert "| early | 40.0 | 41.0 | 40.5 | 1 |" in (tmp_path / "results_gIoU.md").read_text()


def test_missing_cells_are_marked(tmp_path):
    fake_run(tmp_path / "a/seed0", 0, {"x/test": 0.5})
    fake_run(tmp_path / "b/seed0", 0, {"y/test": 0.25})
    table = build_table(load_runs(tmp_path))
    assert table.columns == ["x/test", "y/test", "avg"]
    assert "| a | 50.0 | – | – | 1 |" in to_markdown(table)


def test_table_errors_are_one_line(tmp_path, capsys):
    assert evf_main(["table", str(tmp_path / "nope")]) == 2
    assert evf_main(["table", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def three_configs(tmp_path):
    return [write_config(tmp_path / "exp" / f"{name}.yaml", lr=lr, max_steps=1, test_size=2)
            for name, lr in (("lr_small", 1e-4), ("lr_mid", 1e-3), ("lr_big", 1e-2))]


def test_dry_run_skips_finished_runs_and_slurm_array_renders(tmp_path, capsys):
    configs = three_configs(tmp_path)
    out = tmp_path / "results"
    fake_run(out / "runs/lr_mid/seed1", 1, {"synthetic/test": 0.5})
    argv = ["sweep", *map(str, configs), "--seeds", "0", "1", "--out", str(out)]
    assert evf_main([*argv, "--dry_run", "--", "--trainer.max_steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "6 runs (3 configs x 2 seeds): 1 finished, 5 to run" in printed
    commands = [line for line in printed.splitlines() if " fit " in line]
    assert len(commands) == 5 and all(c.endswith("--trainer.max_steps 3") for c in commands)
    assert not any("lr_mid/seed1" in c for c in commands)

    assert evf_main([*argv, "--slurm", "--no_submit", "--nodes", "2", "--gpus", "4", "--sbatch", "partition=gpu",
                     "--sbatch=--time=4:00:00"]) == 0
    script = (out / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-4" in script and "#SBATCH --nodes=2" in script
    assert "#SBATCH --ntasks-per-node=4" in script and "#SBATCH --partition=gpu" in script and "#SBATCH --time=4:00:00" in script
    assert script.count("--trainer.num_nodes 2 --trainer.devices 4") == 5
    assert subprocess.run(["bash", "-n", str(out / "sweep.sbatch")], check=False).returncode == 0
    assert json.loads((out / "runs/lr_big/seed0/run.json").read_text())["name"] == "lr_big"


def test_overrides_must_follow_double_dash(tmp_path, capsys):
    config = write_config(tmp_path / "a.yaml")
    assert evf_main(["sweep", str(config), "--trainer.max_steps", "3"]) == 2
    assert "after '--'" in capsys.readouterr().err
    assert evf_main(["sweep", str(tmp_path / "none*.yaml")]) == 2


@pytest.mark.slow
def test_sweep_three_configs_two_seeds_end_to_end(tmp_path):
    configs = three_configs(tmp_path)
    out = tmp_path / "results"
    argv = ["sweep", *configs, "--seeds", "0", "1", "--out", out]
    run_evf(*argv)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["config"] for r in rows] == ["lr_small", "lr_mid", "lr_big"]
    assert list(rows[0]) == ["config", "synthetic/test", "synthetic/test std", "synthetic/test n"]
    for row in rows:
        values = [100 * read_metrics(out / "runs" / row["config"] / f"seed{s}")["synthetic/test"]["cIoU"] for s in (0, 1)]
        assert float(row["synthetic/test"]) == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert float(row["synthetic/test std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert row["synthetic/test n"] == "2"
    assert "| lr_mid |" in (out / "results.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    again = run_evf(*argv)
    assert "6 finished, 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps


def rendezvous_run(tmp_path, name: str, partner: str) -> dict:
    """A run that announces itself, then finishes only if ``partner`` has started meanwhile (within 20 s)."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    script = (f"import os, pathlib, sys, time; d = pathlib.Path({str(tmp_path)!r}); (d / '{name}.started').touch(); "
              f"end = time.time() + 20\n"
              f"while not (d / '{partner}.started').exists():\n"
              f"    time.sleep(0.05)\n    if time.time() > end: sys.exit(1)\n"
              f"(d / '{name}' / 'metrics.json').write_text(os.environ.get('OMP_NUM_THREADS', 'unset'))")
    return {"name": name, "seed": 0, "run_dir": run_dir, "command": [sys.executable, "-c", script]}


def test_jobs_run_concurrently_and_share_the_threads(tmp_path, monkeypatch):
    from evf.commands.sweep import run_here

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    runs = [rendezvous_run(tmp_path, "a", "b"), rendezvous_run(tmp_path, "b", "a")]
    assert run_here(runs, jobs=2) == []  # each run waits for the other: only concurrent runs both finish
    assert [(r["run_dir"] / "metrics.json").read_text() for r in runs] == ["4", "4"]


def test_one_job_runs_in_order_and_reports_failures(tmp_path):
    from evf.commands.sweep import run_here

    (tmp_path / "b.started").touch()  # a's partner "started", so a finishes; b waits for c, which never starts
    runs = [rendezvous_run(tmp_path, "a", "b"), rendezvous_run(tmp_path, "b", "c")]
    runs[1]["command"][-1] = runs[1]["command"][-1].replace("+ 20", "+ 0.5")
    assert [r["name"] for r in run_here(runs, jobs=1)] == ["b"]
    assert (runs[0]["run_dir"] / "metrics.json").is_file() and not (runs[1]["run_dir"] / "metrics.json").exists()


def test_jobs_must_be_positive(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("seed_everything: 0\n")
    assert evf_main(["sweep", str(config), "--jobs", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_second_sweep_on_one_folder_is_refused_until_the_first_is_gone(tmp_path, capsys):
    """A sweep re-started while the first still runs would start the same runs twice; after a crash it carries on."""
    import socket

    from tests.lock_helpers import hold_lock, kill

    out = tmp_path / "results"
    argv = ["sweep", str(write_config(tmp_path / "a.yaml")), "--out", str(out), "--slurm", "--no_submit"]
    holder = hold_lock(out / ".evf.lock")
    try:
        capsys.readouterr()
        assert evf_main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert f"sweep folder {out} is in use by pid {holder.pid} on host {socket.gethostname()}" in error
        assert sorted(p.name for p in out.iterdir()) == [".evf.lock"]  # no sweep.json, run.json or script
    finally:
        kill(holder)
    assert evf_main(argv) == 0
    assert (out / "sweep.sbatch").is_file() and not (out / ".evf.lock").exists()
