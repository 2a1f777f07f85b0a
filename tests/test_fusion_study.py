"""The paper's central claim in miniature: early fusion beats text-only prompts (slow; pre-trains and trains).

Both rows follow the fusion-study recipe (experiments/mini_base.yaml): tiny BEiT-3 and tiny SAM-1, each
pre-trained first as `python -m studies.fusion.pretrain` does (SAM for promptable segmentation, BEiT-3 by masked language
modelling + image-text matching on scene captions), then fine-tuned with AdamW 2e-3, batch 16, on the
synthetic spatial benchmark, and scored on the same test split. studies/fusion/README.md has the full sweep.
"""
from __future__ import annotations

import os

import pytest

SAM_STEPS, ENCODER_STEPS = 1500, 3000  # the pre-training CLI's defaults
STEPS = 600  # the sweep's fine-tuning budget
TEST_SIZE = 300
MARGIN = 0.05  # cIoU (absolute) by which early fusion must beat text-only


def pretrained(tmp_path) -> tuple[str, str]:
    import torch

    from evf.encoders import Beit3Encoder
    from evf.sam import Sam1Backend
    from studies.fusion.pretrain import pretrain_encoder, pretrain_sam

    torch.manual_seed(0)
    sam = Sam1Backend(variant="tiny")
    pretrain_sam(sam, SAM_STEPS, log=None)
    torch.save(sam.model.state_dict(), tmp_path / "sam.pth")
    torch.manual_seed(0)
    encoder = Beit3Encoder(size="tiny", mode="early")
    pretrain_encoder(encoder, ENCODER_STEPS, log=None)
    torch.save(encoder.beit3.state_dict(), tmp_path / "beit3.pth")
    return str(tmp_path / "sam.pth"), str(tmp_path / "beit3.pth")


def train_and_test(mode: str, sam_weights: str, beit3_weights: str) -> float:
    import lightning as L

    from datamodules.spatial import SpatialRefDataModule
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.module import EVFSAMModule
    from evf.sam import Sam1Backend

    L.seed_everything(0)
    model = EVFSAM(Beit3Encoder(size="tiny", mode=mode, checkpoint=beit3_weights), Sam1Backend(variant="tiny", checkpoint=sam_weights))
    module = EVFSAMModule(model, lr=2e-3, warmup_steps=50)
    data = SpatialRefDataModule(train_size=20000, val_size=4, test_size=TEST_SIZE, seed=0, batch_size=16)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return float(trainer.test(module, datamodule=data, verbose=False)[0]["test/cIoU"])


@pytest.mark.slow
@pytest.mark.timeout(2400)  # pre-training + two runs: ~12 min on 2 free cores, above the suite's 900 s default
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="measured (studies/fusion/README.md): tiny early fusion does not beat text-only "
                   "within CPU budgets, from random init or from miniature pre-training; strict, so this fails once the claim holds")
def test_early_fusion_beats_text_only_on_spatial_test_split(tmp_path):
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    sam_weights, beit3_weights = pretrained(tmp_path)
    early, text = (train_and_test(mode, sam_weights, beit3_weights) for mode in ("early", "text"))
    print(f"spatial test cIoU: early fusion {early:.4f}, text-only {text:.4f} ({STEPS} steps after pre-training)")
    assert early > text + MARGIN, f"early {early:.4f} vs text-only {text:.4f}: margin below {MARGIN}"
