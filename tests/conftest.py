"""Shared fixtures: tiny random-weight plugins, the toy tokenizer, offline settings."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the CI machine has 2 cores; parallel BLAS threads only add contention


@pytest.fixture(scope="session", autouse=True)
def evf_generated(tmp_path_factory):
    """Keep the generated toy tokenizer, vocabulary and dataset fixtures inside the test session's temp dir."""
    path = tmp_path_factory.mktemp("evf-generated")
    os.environ["EVF_GENERATED"] = str(path)
    return path


@pytest.fixture
def tiny_model():
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import Sam1Backend

    torch.manual_seed(0)
    return EVFSAM(Beit3Encoder(size="tiny"), Sam1Backend(variant="tiny")).eval()


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
