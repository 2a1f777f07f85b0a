"""Shared fixtures: tiny random-weight plugins, the toy tokenizer, offline settings."""
from __future__ import annotations

import os
import sys

# Container images often set PYTHONDONTWRITEBYTECODE; the suite keeps bytecode caches anyway (in the ignored
# __pycache__ folders): otherwise every test process recompiles evf and re-rewrites the asserts of every test module.
sys.dont_write_bytecode = False

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

# torch, numpy and evf are imported inside fixtures: under pytest-xdist this file is also imported by the
# controller process, which runs no test and should not spend seconds importing torch before starting workers


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """The CI machine has 2 cores and runs 2 workers: parallel BLAS threads only add contention."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def evf_generated(tmp_path_factory):
    """Keep the generated toy tokenizer, vocabulary and dataset fixtures inside the test session's temp dir."""
    path = tmp_path_factory.mktemp("evf-generated")
    os.environ["EVF_GENERATED"] = str(path)
    return path


@pytest.fixture
def tiny_model():
    import torch

    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import Sam1Backend

    torch.manual_seed(0)
    return EVFSAM(Beit3Encoder(size="tiny"), Sam1Backend(variant="tiny")).eval()


@pytest.fixture
def rgb_image():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny official-format EVF-SAM release folder (one per test module: tests may alter their copy)."""
    from tests.tiny_artifacts import write_release_folder

    return write_release_folder(tmp_path_factory.mktemp("release") / "evf-sam-tiny")


@pytest.fixture(scope="module")
def fit_config(tmp_path_factory):
    """A tiny ``evf fit`` YAML (model, synthetic data, CPU trainer) with its SAM weights file."""
    from tests.tiny_artifacts import write_fit_config

    return write_fit_config(tmp_path_factory.mktemp("fit"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny ``evf fit`` per test process, shared by the modules that only read it (they copy what they alter):
    ``(cli, checkpoint path, run config.yaml)``."""
    from tests.tiny_artifacts import tiny_fit

    return tiny_fit(tmp_path_factory.mktemp("fit"))


@pytest.fixture
def work(tmp_path):
    """A folder with ``image.png`` and an ``out/`` holding an earlier ``evf predict`` call's outputs and manifest."""
    import json

    from tests.tiny_artifacts import write_image

    write_image(tmp_path / "image.png", size=(64, 64))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "overlay.png").write_bytes(b"an earlier result")
    manifest = {"format": 1, "status": "complete", "files": ["overlay.png"]}  # the earlier call's: evf's to replace
    (tmp_path / "out" / "predictions.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.fixture(autouse=True)
def lightning_log_stream():
    """Lightning's log handler keeps the stderr of the moment Lightning is first imported; when that is a test's
    capsys stream, it is closed after the test and every later log line fails. Point it back at the live stderr."""
    yield
    import logging
    import sys

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr


def pytest_unconfigure(config):
    """A test process ends with Python collecting its whole heap (torch, Lightning, hundreds of built models):
    ~3.5 s per process on 2 cores, which the xdist controller waits for. Nothing is left that needs collecting."""
    import gc

    gc.freeze()
