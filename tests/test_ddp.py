"""Multi-process CPU (gloo) training: every sample counted once, metrics equal to a 1-process evaluation.

``test_two_nodes_with_plain_ddp`` is the multi-node guarantee (docs/reliability.md): two ``torchrun`` "nodes" on
loopback with Lightning's plain ``ddp`` strategy (``find_unused_parameters=False``), which stops after the first
step if any trainable parameter gets no gradient; the fast check of that is tests/test_trainable_contract.py.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.multinode import (
    assert_same_training,
    one_process_batch4_weights,
    one_process_metrics,
    torchrun_two_nodes,
    two_node_fit_args,
)
from tests.training_helpers import REPO, read_metrics, run_evf, write_config

pytestmark = pytest.mark.slow  # every process imports Lightning & co. (~15 s of CPU) before it trains

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
    assert one_process_metrics(run / "config.yaml", checkpoint, tmp_path / "single.json") == two  # exact, every metric

    rows = [json.loads(line) for line in (run / "predictions" / "synthetic_test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"test-{i}" for i in range(5)]
    assert sum(r["I"] for r in rows) / sum(r["U"] for r in rows) == two["synthetic/test"]["cIoU"]
    assert set(rows[0]) == {"id", "sentence", "I", "U", "IoU"}


def test_two_nodes_with_plain_ddp(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", max_steps=3, test_size=5, extra=TEST_SETS)
    run = tmp_path / "two-nodes"
    torchrun_two_nodes(*two_node_fit_args(config, run, "--trainer.strategy", "ddp", "--test_after_fit", "true"))

    saved = json.loads((run / "metrics.json").read_text())
    assert saved["global_step"] == 3
    two = saved["test"]
    assert two["synthetic/test"]["samples"] == 5 and two["synthetic/val"]["samples"] == 3
    assert one_process_metrics(run / "config.yaml", saved["checkpoint"], tmp_path / "single.json") == two

    # Gradients were averaged over the nodes: 2 nodes x batch 2 train like 1 process x batch 4 (each of the 3 steps
    # sees all 4 samples). Unsynced, node 0 would have trained on its half only.
    weights = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert_same_training(weights, one_process_batch4_weights(config, tmp_path / "one-process"))
