"""Training steps with half-precision weights on every SAM backend, on the CPU: the two ways GPU recipes cast.

- DeepSpeed's bf16 (the paper recipe's strategy) casts parameters only and keeps buffers fp32;
- Lightning's ``bf16-true`` and ``model.to(torch.bfloat16)`` cast buffers too.
Either used to fail inside segment-anything / sam2 (position encodings built in fp32: see
``evf.sam.base.dense_position_encoding``); tests/test_gpu.py runs the DeepSpeed recipe itself on a GPU.
"""
from __future__ import annotations

import pytest
import torch

from tests.tiny_artifacts import tiny_evfsam

BACKENDS = ["sam1", "sam2", "efficientsam"]


def first_batch(model) -> dict:
    from datamodules import SyntheticRefDataModule

    data = SyntheticRefDataModule(train_size=4, val_size=1, test_size=1, batch_size=2, image_size=48)
    data.attach(model.preprocessor())
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def cast(batch: dict, dtype: torch.dtype) -> dict:
    """What the strategies do to a batch: floating tensors to the weights' dtype, the rest as it is."""
    def one(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(dtype)
        return [one(v) for v in x] if isinstance(x, list) else x
    return {k: one(v) for k, v in batch.items()}


@pytest.mark.parametrize("buffers", ["fp32 (DeepSpeed)", "bf16 (bf16-true)"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_with_bf16_weights(backend, buffers):
    model = tiny_evfsam(backend=backend).train()
    batch = first_batch(model)
    want = model.loss(model(batch), batch["masks"])["loss"].item()
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    if buffers.startswith("bf16"):
        model.to(torch.bfloat16)
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float32 if buffers.startswith("fp32")
                                                                             else torch.bfloat16}
    half = cast(batch, torch.bfloat16)
    loss = model.loss(model(half), half["masks"])["loss"]
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - want) < 0.03 * abs(want)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
