"""2-process CPU (gloo) fit + test: every sample counted once, metrics equal to a 1-process evaluation."""
from __future__ import annotations

import json

import pytest

from tests.training_helpers import REPO, read_metrics, run_evf, write_config

pytestmark = pytest.mark.slow

TEST_SETS = """\
test_sets:
  - {test_split: test}
  - {name: synthetic/val, test_split: val}
"""


def test_two_process_fit_and_test_equal_one_process_evaluation(tmp_path):
    # 5 test and 3 val samples: neither divisible by 2, so a padding sampler would count a sample twice.
    config = write_config(tmp_path / "tiny.yaml", max_steps=2, test_size=5, extra=TEST_SETS)
    run = tmp_path / "ddp"
    run_evf("fit", "--config", config, "--config", REPO / "experiments/strategies/ddp.yaml", "--trainer.devices", "2",
            "--run_dir", run, "--test_after_fit", "true", "--save_predictions", "true")
    two = read_metrics(run)
    assert list(two) == ["synthetic/test", "synthetic/val"]
    assert two["synthetic/test"]["samples"] == 5 and two["synthetic/val"]["samples"] == 3

    checkpoint = json.loads((run / "metrics.json").read_text())["checkpoint"]
    single = tmp_path / "single.json"
    run_evf("test", "--config", run / "config.yaml", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--run_dir", "null", "--save_predictions", "false", "--metrics_file", single, "--ckpt_path", checkpoint)
    assert json.loads(single.read_text())["test"] == two  # exact equality, every metric

    rows = [json.loads(line) for line in (run / "predictions" / "synthetic_test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"test-{i}" for i in range(5)]
    assert sum(r["I"] for r in rows) / sum(r["U"] for r in rows) == two["synthetic/test"]["cIoU"]
    assert set(rows[0]) == {"id", "sentence", "I", "U", "IoU"}
