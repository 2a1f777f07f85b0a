"""Kill a fit with SIGKILL mid-run, resume from last.ckpt: same final weights and test metrics as an uninterrupted run."""
from __future__ import annotations

import signal
import subprocess

import pytest
import torch

from tests.training_helpers import REPO, evf_command, read_metrics, run_evf, subprocess_env, wait_for, write_config

pytestmark = pytest.mark.slow

# 4 samples / batch 2 = 2 optimizer steps per epoch; last.ckpt is written on the last batch of every epoch.
CHECKPOINTS = """\
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2}
"""
PAUSE = """\
    - class_path: tests.training_helpers.PauseAtStep
      init_args: {{step: 5, marker: {marker}}}
"""


def trainable_state(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", max_steps=8, test_size=3, extra=CHECKPOINTS)
    reference = tmp_path / "reference"
    run_evf("fit", "--config", config, "--run_dir", reference, "--test_after_fit", "true")

    marker = tmp_path / "paused"
    paused_config = write_config(tmp_path / "paused.yaml", max_steps=8, test_size=3,
                                 extra=CHECKPOINTS + PAUSE.format(marker=marker))
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(evf_command("fit", "--config", paused_config, "--run_dir", resumed, "--test_after_fit", "true"),
                               cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(marker, process)
        process.send_signal(signal.SIGKILL)  # mid-epoch 3: step 5 of 8, last.ckpt holds step 4
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (resumed / "metrics.json").exists()
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    run_evf("fit", "--config", config, "--run_dir", resumed, "--test_after_fit", "true", "--ckpt_path", "last")

    expected, got = trainable_state(reference / "checkpoints" / "last.ckpt"), trainable_state(resumed / "checkpoints" / "last.ckpt")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert read_metrics(resumed) == read_metrics(reference)
