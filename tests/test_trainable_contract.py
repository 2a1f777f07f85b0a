"""The whole model, every registered backend and encoder: what is trainable is exactly what a text-prompted loss reaches.

Plain DDP (Lightning's default multi-device strategy) stops after its first step when a parameter with
``requires_grad=True`` gets no gradient, so after one backward pass every trainable parameter must have one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import evf
from evf.encoders import ENCODERS
from evf.model import EVFSAM
from evf.presets import get_preset
from evf.sam import SAM_BACKENDS

# The tiny presets: every backend with BEiT-3 and every encoder (default mode) with SAM-1; encoder modes,
# features and depths are covered in test_encoder_contract.py, backend switches in test_sam_backends.py.
TINY = evf.list_models("tiny-*")


def text_prompted_loss(model: EVFSAM) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 9 * i, 52, 3), dtype=np.uint8) for i in range(2)]
    masks = [rng.random(im.shape[:2]) > 0.5 for im in images]
    pre = model.preprocessor()
    batch = pre.collate([pre({"image": im, "text": t, "mask": m})
                         for im, t, m in zip(images, ["the red circle", "the blue square on the left"], masks)])
    return model.loss(model(batch), batch["masks"])["loss"]


def test_every_registered_plugin_is_covered():
    presets = [get_preset(name) for name in TINY]
    assert {p.sam for p in presets} == set(SAM_BACKENDS) and {p.encoder for p in presets} == set(ENCODERS)


@pytest.mark.parametrize("name", TINY)
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = evf.create_model(name).train()
    text_prompted_loss(model).backward()
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    with_grad = {n for n, p in named.items() if p.grad is not None}
    assert trainable == with_grad, f"trainable without gradient: {sorted(trainable - with_grad)[:4]}"
    # nothing a text prompt reaches was frozen on top of the switches (all on here) and the image encoder
    assert {n for n in named if n.startswith("encoder.")} & trainable == {f"encoder.{n}" for n in model.encoder.used_parameters()}
    assert {n for n in trainable if n.startswith("projector.")} == {n for n in named if n.startswith("projector.")}
    frozen_sam = {n for n, p in model.sam.named_parameters() if not p.requires_grad and model.sam.reached_by_text(n)}
    in_modules = {id(p) for m in model.sam.trainable_modules().values() for p in m.parameters()}
    assert not any(id(p) in in_modules for n, p in model.sam.named_parameters() if n in frozen_sam)
