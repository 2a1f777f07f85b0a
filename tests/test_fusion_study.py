"""The paper's central claim in miniature: early fusion beats text-only prompts (slow; trains two tiny models).

Both rows use the fusion-study recipe (experiments/mini_base.yaml: tiny BEiT-3 + tiny SAM-1, AdamW
2e-3, batch 16) on the synthetic spatial benchmark, with the budget below, and are scored on the same
test split. See docs/results.md for what the full sweep measured.
"""
from __future__ import annotations

import os

import pytest

STEPS = 3000  # 5x the sweep's budget: ~8 min per row on 2 free CPU cores
TEST_SIZE = 300
MARGIN = 0.05  # cIoU (absolute) by which early fusion must beat text-only


def train_and_test(mode: str, steps: int = STEPS) -> float:
    import lightning as L
    import torch

    from datamodules.spatial import SpatialRefDataModule
    from evf.encoders import Beit3Encoder
    from evf.lightning import EVFSAMModule
    from evf.model import EVFSAM
    from evf.sam import Sam1Backend

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    L.seed_everything(0)
    model = EVFSAM(Beit3Encoder(size="tiny", mode=mode), Sam1Backend(variant="tiny"))
    module = EVFSAMModule(model, lr=2e-3, warmup_steps=50)
    data = SpatialRefDataModule(train_size=20000, val_size=4, test_size=TEST_SIZE, seed=0, batch_size=16)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return float(trainer.test(module, datamodule=data, verbose=False)[0]["test/cIoU"])


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two 3000-step runs: ~18 min on 2 free cores, above the suite's 900 s default
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="measured (docs/results.md): from random init, tiny early fusion does not beat "
                                       "text-only within CPU budgets; strict, so this fails once the claim holds")
def test_early_fusion_beats_text_only_on_spatial_test_split():
    early, text = train_and_test("early"), train_and_test("text")
    print(f"spatial test cIoU: early fusion {early:.4f}, text-only {text:.4f} ({STEPS} steps)")
    assert early > text + MARGIN, f"early {early:.4f} vs text-only {text:.4f}: margin below {MARGIN}"
