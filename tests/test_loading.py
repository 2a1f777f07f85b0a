"""``evf.load`` over each kind of source: a release folder, a ``.ckpt``, a run folder, YAML alone."""
from __future__ import annotations

import shutil

import pytest
import torch

import evf
from evf.checkpoint import CheckpointError
from evf.errors import UserError
from evf.model import EVFSAM
from tests.tiny_artifacts import write_image, write_release_folder

PROMPTS = ["the red square", "blue"]


@pytest.fixture(scope="module")
def fitted(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from evf.io import read_image

    return read_image(write_image(tmp_path_factory.mktemp("img") / "img.png", seed=3))


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_release_folder_loads_as_from_pretrained(tmp_path, image):
    folder = write_release_folder(tmp_path / "evf-sam-tiny")
    loaded = evf.load(folder)
    assert loaded.datamodule is None and loaded.module is None and loaded.checkpoint == folder
    assert not loaded.model.training and same_state(loaded.model, EVFSAM.from_pretrained(folder))
    assert evf.load(folder / "model.safetensors").model.predict(image, PROMPTS).equal(loaded.model.predict(image, PROMPTS))
    with pytest.raises(UserError, match="release folder: it takes no config or overrides"):
        evf.load(folder, overrides=["model.lr=1"])


def test_a_checkpoint_gives_the_trained_model_and_its_datamodule(fitted, image):
    cli, ckpt, run_config = fitted
    loaded = evf.load(ckpt)  # the run's config.yaml is found above the checkpoint
    assert loaded.checkpoint == ckpt and not loaded.model.training
    expected = cli.model.model.eval().predict(image, PROMPTS)
    assert 0 < expected.float().mean() < 1 and loaded.model.predict(image, PROMPTS).equal(expected)
    assert type(loaded.datamodule).__name__ == "SyntheticRefDataModule"
    assert (loaded.datamodule.sizes["train"], loaded.datamodule.batch_size) == (4, 2)  # as configured
    assert evf.load(ckpt, run_config, datamodule=False).datamodule is None


def test_a_run_folder_picks_best_else_last_else_its_only_checkpoint(fitted, tmp_path, image):
    cli, ckpt, run_config = fitted
    assert evf.load(run_config.parent).checkpoint == ckpt  # tiny_fit's folder holds one epoch=...ckpt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(run_config, run / "config.yaml")
    state = torch.load(ckpt, weights_only=True)
    changed = {**state, "state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}}
    torch.save(changed, run / "checkpoints" / "last.ckpt")
    assert evf.load(run).checkpoint == run / "checkpoints" / "last.ckpt"
    shutil.copy(ckpt, run / "checkpoints" / "best-step=1.ckpt")
    loaded = evf.load(run, datamodule=False)
    assert loaded.checkpoint == run / "checkpoints" / "best-step=1.ckpt"
    assert loaded.model.predict(image, PROMPTS).equal(cli.model.model.eval().predict(image, PROMPTS))
    shutil.copy(ckpt, run / "checkpoints" / "best-step=2.ckpt")  # two bests: last.ckpt's ModelCheckpoint state decides
    with pytest.raises(UserError, match="several best checkpoints"):
        evf.load(run)
    recorded = {"ModelCheckpoint{'monitor': 'val/cIoU'}": {"best_model_path": "/elsewhere/checkpoints/best-step=2.ckpt"}}
    torch.save({**changed, "callbacks": recorded}, run / "checkpoints" / "last.ckpt")
    assert evf.load(run, datamodule=False).checkpoint == run / "checkpoints" / "best-step=2.ckpt"


def test_yaml_alone_gives_an_untrained_model_the_datamodule_and_overrides(fitted):
    cli, _, run_config = fitted
    loaded = evf.load(run_config, overrides=["data.init_args.batch_size=3", "--model.lr=0.5"])
    assert loaded.checkpoint is None and loaded.module.lr == 0.5 and loaded.datamodule.batch_size == 3
    again = evf.load([run_config], overrides={"data.init_args.batch_size": 3})  # seed_everything: 0 -> same weights
    assert same_state(loaded.model, again.model) and not same_state(loaded.model, cli.model.model)
    assert again.module.lr == 1e-3 and again.datamodule.batch_size == 3  # the mapping set only the batch size


def test_bad_sources_fail_in_one_line(fitted, tmp_path):
    _, ckpt, run_config = fitted
    with pytest.raises(CheckpointError, match="checkpoint not found: "):
        evf.load(tmp_path / "none.ckpt")
    with pytest.raises(UserError, match="config not found: "):
        evf.load(ckpt, tmp_path / "none.yaml")
    lonely = tmp_path / "lonely.ckpt"
    shutil.copy(ckpt, lonely)
    with pytest.raises(UserError, match="no config.yaml found next to"):
        evf.load(lonely)
    (tmp_path / "empty_run").mkdir()
    shutil.copy(run_config, tmp_path / "empty_run" / "config.yaml")
    with pytest.raises(UserError, match="has no checkpoints"):
        evf.load(tmp_path / "empty_run")
