"""The README's main job: `evf fit --config experiments/quickstart.yaml` trains, tests and prints metrics."""
from __future__ import annotations

import re

import numpy as np
import pytest

from datamodules.synthetic import SyntheticRefDataset, generate_sample
from evf.cli import main

LINE = re.compile(r"test: cIoU=([0-9.]+) gIoU=([0-9.]+) P@0\.5=([0-9.]+) samples=(\d+)")


def run_quickstart(tmp_path, capsys, *overrides: str) -> tuple[float, float, int]:
    argv = ["fit", "--config", "experiments/quickstart.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), *overrides]
    assert main(argv) == 0
    found = LINE.findall(capsys.readouterr().out)
    assert found, "the quickstart must print its test metrics"
    ciou, giou, _, samples = found[-1]
    return float(ciou), float(giou), int(samples)


def baselines(size: int) -> tuple[float, float]:
    """cIoU of predicting all background (0 by definition) and all foreground on the test split."""
    inter = union = 0
    for sample in SyntheticRefDataset("test", size):
        inter += sample["mask"].sum()
        union += sample["mask"].size
    return 0.0, inter / union


def test_quickstart_cli_trains_tests_and_reports(tmp_path, capsys):
    ciou, giou, samples = run_quickstart(
        tmp_path, capsys, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--data.init_args.train_size", "8", "--data.init_args.val_size", "3", "--data.init_args.test_size", "5",
        "--data.init_args.batch_size", "4")
    assert samples == 5  # every test sample counted once
    assert 0.0 <= ciou <= 1.0 and 0.0 <= giou <= 1.0
    assert list(tmp_path.rglob("last.ckpt")), "a last checkpoint is saved"
    assert list(tmp_path.rglob("config.yaml")), "the resolved config is saved with the run"


def test_synthetic_data_is_deterministic_and_needs_the_image():
    a, b = generate_sample(0, "test", 7), generate_sample(0, "test", 7)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"]) and a["text"] == b["text"]
    assert not np.array_equal(generate_sample(1, "test", 7)["image"], a["image"])
    texts = {generate_sample(0, "train", i)["text"] for i in range(60)}
    # the same expression names different pixels in different scenes: the text alone cannot locate them
    assert len(texts) < 60
    assert any(" on the " in t or " top " in t or "largest" in t for t in texts)


@pytest.mark.slow
def test_quickstart_beats_trivial_baselines(tmp_path, capsys):
    ciou, giou, samples = run_quickstart(tmp_path, capsys)
    background, foreground = baselines(samples)
    print(f"quickstart test cIoU={ciou:.4f} gIoU={giou:.4f}; all-background cIoU={background:.4f}, "
          f"all-foreground cIoU={foreground:.4f}")
    assert samples == 200
    assert ciou > foreground + 0.15 and ciou > background + 0.15
