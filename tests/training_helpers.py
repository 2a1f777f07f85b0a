"""Tiny training configs and subprocess helpers shared by the training-system tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tests.tiny_artifacts import TINY_MODEL_YAML

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

TINY_YAML = TINY_MODEL_YAML + """\
  warmup_steps: 1
data:
  class_path: datamodules.SyntheticRefDataModule
  init_args: {{train_size: {train_size}, val_size: 3, test_size: {test_size}, batch_size: 2, eval_batch_size: 1, image_size: 48}}
trainer:
  accelerator: cpu
  max_steps: {max_steps}
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_model_summary: false
  enable_progress_bar: false
"""


def write_sam_weights(folder: Path) -> Path:
    """Frozen SAM weights in a file, as in real use: rebuilding a model restores them exactly."""
    from safetensors.torch import save_file

    from evf.sam import Sam1Backend

    path = folder / "sam_tiny.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(123)
        save_file({k: v.contiguous() for k, v in Sam1Backend(variant="tiny").model.state_dict().items()}, str(path))
    return path


def write_config(path: Path, lr: float = 1e-3, max_steps: int = 2, train_size: int = 4, test_size: int = 5,
                 extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY_YAML.format(sam_weights=write_sam_weights(path.parent), lr=lr, max_steps=max_steps,
                                     train_size=train_size, test_size=test_size) + extra)
    return path


def evf_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "evf.cli", *map(str, args)]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("EVF_DEBUG", None)
    return env


def run_evf(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(evf_command(*args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"evf {' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"process ended (exit {process.returncode}) before {path} appeared")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.2)


class PauseAtStep(Callback):
    """Writes ``marker`` and then blocks once ``global_step`` reaches ``step``, so a test can SIGKILL
    the process at a known point of training (the pause itself touches no RNG or weights)."""

    def __init__(self, step: int, marker: str):
        self.step = step
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            Path(self.marker).write_text(str(trainer.global_step))
            while True:
                time.sleep(1)
