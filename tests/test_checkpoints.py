"""Training checkpoints: trainable weights + optimizer/scheduler only; reloading restores identical outputs."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import SyntheticRefDataModule
from evf.checkpoint_filter import frozen_state_keys
from evf.encoders import Beit3Encoder
from evf.model import EVFSAM
from evf.module import EVFSAMModule
from evf.sam import Sam1Backend
from tests.training_helpers import write_sam_weights


def build_module(sam_weights, seed: int, **kwargs) -> EVFSAMModule:
    torch.manual_seed(seed)
    return EVFSAMModule(EVFSAM(Beit3Encoder(size="tiny"), Sam1Backend(variant="tiny", checkpoint=str(sam_weights))),
                        lr=1e-3, warmup_steps=1, **kwargs)


def datamodule() -> SyntheticRefDataModule:
    return SyntheticRefDataModule(train_size=4, val_size=2, test_size=2, batch_size=1, image_size=48)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    sam_weights = write_sam_weights(root)
    module = build_module(sam_weights, seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule())
    path = root / "trained.ckpt"
    trainer.save_checkpoint(path)
    return module, trainer, path, sam_weights


def test_scheduler_steps_once_per_optimizer_step(trained):
    _, trainer, _, _ = trained
    assert trainer.global_step == 2  # 4 batches, accumulation 2
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 2
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.0)  # linear decay reaches 0 at max_steps


def test_checkpoint_holds_only_trainable_weights(trained):
    module, _, path, _ = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert not any(".image_encoder." in k for k in keys)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable <= keys
    assert keys.isdisjoint(frozen_state_keys(module))
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    full = sum(v.numel() for v in module.state_dict().values())
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) < full


def test_reload_restores_identical_outputs(trained):
    module, _, path, sam_weights = trained
    fresh = build_module(sam_weights, seed=7)  # other random init: only the file and the checkpoint matter
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    dm = datamodule().attach(module.model.preprocessor())
    batch = next(iter(dm.test_dataloader()))
    module.eval(), fresh.eval()
    with torch.no_grad():
        for a, b in zip(module.model(batch), fresh.model(batch)):
            assert torch.equal(a, b)


def test_missing_trainable_weight_still_fails(trained):
    _, _, path, sam_weights = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    del checkpoint["state_dict"]["model.projector.0.weight"]
    fresh = build_module(sam_weights, seed=0)
    fresh.on_load_checkpoint(checkpoint)
    with pytest.raises(RuntimeError, match="projector.0.weight"):
        fresh.load_state_dict(checkpoint["state_dict"], strict=True)


def test_save_frozen_weights_keeps_everything(trained):
    sam_weights = trained[3]
    keeper = build_module(sam_weights, seed=0, save_frozen_weights=True)
    checkpoint = {"state_dict": keeper.state_dict()}
    keeper.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(keeper.state_dict())
