"""The whole model, every registered backend and encoder: what is trainable is exactly what a text-prompted loss reaches.

Plain DDP (Lightning's default multi-device strategy) stops after its first step when a parameter with
``requires_grad=True`` gets no gradient, so after one backward pass every trainable parameter must have one.
"""
from __future__ import annotations

import pytest

import evf
from evf.encoders import ENCODERS
from evf.presets import get_preset
from evf.sam import SAM_BACKENDS
from tests.contracts import check_trainable_gradients

# The tiny presets: every backend with BEiT-3 and every encoder (default mode) with SAM-1; encoder modes,
# features and depths are covered in test_encoder_contract.py, backend switches in test_sam_backends.py.
TINY = evf.list_models("tiny-*")


def test_every_registered_plugin_is_covered():
    presets = [get_preset(name) for name in TINY]
    assert {p.sam for p in presets} == set(SAM_BACKENDS) and {p.encoder for p in presets} == set(ENCODERS)


@pytest.mark.parametrize("name", TINY)
def test_every_trainable_parameter_gets_a_gradient(name):
    check_trainable_gradients(name)
