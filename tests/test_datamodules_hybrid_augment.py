"""Hybrid mixture (ratios, restarts), seeded train stream, augmentation alignment, dataset checks, registry."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from datamodules import DATAMODULES, prepare
from datamodules.augment import Augmenter, build_augmentation
from datamodules.check import check_dataset
from datamodules.common import EpochSampler
from datamodules.hybrid import HybridDataModule
from datamodules.refcoco import RefCocoDataModule
from datamodules.semantic import ADE20KDataModule
from datamodules.testing import ade20k, refcoco


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("hybrid")
    return {"refer": refcoco.write(base / "refer")["root"], "ade": ade20k.write(base / "ade")["root"]}


def hybrid(roots, seed=0, ratios=(3, 1), length=20_000):
    return HybridDataModule({"refcoco": {"type": "refcoco", "ratio": ratios[0], "root": str(roots["refer"])},
                             "ade20k": {"type": "datamodules.ADE20KDataModule", "ratio": ratios[1], "root": str(roots["ade"])}},
                            samples_per_epoch=length, seed=seed)


def test_hybrid_source_frequencies_match_ratios(roots):
    """20,000 draws at p=0.75: binomial std 0.0031, tolerance 0.02 (> 6 std)."""
    stream = hybrid(roots).raw_dataset("train")
    sources = np.array([stream.choose(p)[0] for p in range(20_000)])
    assert abs((sources == 0).mean() - 0.75) < 0.02
    zero = hybrid(roots, ratios=(1, 0)).raw_dataset("train")
    assert all(zero.choose(p)[0] == 0 for p in range(200))


@pytest.mark.parametrize("kind", ["refcoco", "datamodules.RefCocoDataModule"])
def test_hybrid_source_with_an_unknown_argument_is_one_config_error(roots, kind):
    from evf.config_errors import ConfigError

    with pytest.raises(ConfigError, match=r"hybrid source 'refcoco': RefCocoDataModule has no argument 'roots'; "
                                          r"did you mean 'root'\? it takes root, "):
        HybridDataModule({"refcoco": {"type": kind, "ratio": 1, "roots": str(roots["refer"])}})


def test_hybrid_stream_is_identical_across_restarts(roots):
    first, again, other = (hybrid(roots, seed=s, length=40).raw_dataset("train") for s in (7, 7, 8))
    picks = [first.choose(p)[:2] for p in range(300)]
    assert picks == [again.choose(p)[:2] for p in range(300)]
    assert picks != [other.choose(p)[:2] for p in range(300)]
    for p in (0, 5, 39, 41, 123):  # samples themselves, across epochs too
        a, b = first[p], again[p]
        assert (a["text"], a["id"], a["source"]) == (b["text"], b["id"], b["source"]) and np.array_equal(a["mask"], b["mask"])
    sampler = EpochSampler(40, seed=7, shuffle=False)
    sampler.set_epoch(3)
    assert list(sampler) == list(range(120, 160))


def test_train_sampler_reshuffles_per_epoch_and_replays_on_restart():
    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    epochs = [list(a) for _ in range(3)]  # advances by itself when set_epoch is never called
    b.set_epoch(2)
    assert list(b) == epochs[2]
    assert sorted(p % 10 for p in epochs[1]) == list(range(10)) and all(p // 10 == 1 for p in epochs[1])
    assert [p % 10 for p in epochs[0]] != [p % 10 for p in epochs[1]]


def aligned_sample(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((40, 48), dtype=bool)
    mask[8:30, 10:22] = True
    mask[25:38, 30:45] = True
    image = rng.integers(0, 100, size=(40, 48, 3), dtype=np.uint8)
    image[mask] = 255  # the mask is recoverable from the image: bright pixels
    return {"image": image, "mask": mask, "text": "x", "id": "0", "image_id": "0"}


def test_augmentation_keeps_image_and_mask_aligned():
    spec = [{"name": "Affine", "scale": [0.6, 1.4], "translate_percent": [-0.2, 0.2], "rotate": [-30, 30], "p": 1.0,
             "interpolation": 0, "fill": 0, "fill_mask": 0}, {"name": "ToGray", "p": 1.0}]
    augment = Augmenter(build_augmentation(spec))
    assert augment.geometric
    moved = 0
    for seed in range(8):
        sample = aligned_sample(seed)
        out = augment({**sample, "seed": seed})
        assert out["mask"].dtype == bool and out["image"].shape == sample["image"].shape
        assert np.array_equal(out["mask"], out["image"][..., 0] == 255)
        moved += not np.array_equal(out["mask"], sample["mask"])
        again = augment({**sample, "seed": seed})
        assert np.array_equal(again["image"], out["image"])  # the sample's seed decides the parameters
    assert moved >= 6
    assert not Augmenter(build_augmentation("color")).geometric and Augmenter(build_augmentation("scale")).geometric
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        build_augmentation("flipflop")


def test_datamodule_augmentation_is_train_only_and_flagged(roots, tiny_model):
    dm = ADE20KDataModule(str(roots["ade"]), augment="scale", batch_size=2).attach(tiny_model.preprocessor())
    assert dm.geometric_augmentation and not ADE20KDataModule(str(roots["ade"]), augment="color").geometric_augmentation
    assert dm.dataset("train", train=True).augment is not None and dm.dataset("val").augment is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and len(batch["masks"]) == 2


def test_check_reports_problems_and_exit_codes(roots, tmp_path, capsys):
    reports = check_dataset("refcoco", roots["refer"], progress=False)
    assert [r.split for r in reports] == ["train", "val", "testA", "testB"] and not any(r.fatal for r in reports)
    assert sum(r.items for r in reports) == 8 and sum(len(r.problems["empty masks"]) for r in reports) == 1
    root = tmp_path / "refer"
    shutil.copytree(roots["refer"], root)
    missing = sorted((root / "images/mscoco/images/train2014").glob("*.jpg"))[1]
    missing.unlink()
    assert prepare.main(["refcoco", "--check", "--root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "missing images" in out and missing.name in out and "FAILED" in out
    assert prepare.main(["refcocog", "--check", "--root", str(root), "--splits", "val", "--set", "split_by=google",
                         "--no-progress"]) == 1
    (root / "refclef" / "refs(unc).p").unlink()
    assert prepare.main(["refclef", "--check", "--root", str(root), "--no-progress", "--quick"]) == 1
    assert "refs file not found" in capsys.readouterr().out


def test_every_registered_datamodule_loads_its_tiny_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("EVF_GENERATED", str(tmp_path))
    for name in DATAMODULES:
        dm = DATAMODULES.create(name, tiny=True)
        for split, train in ((dm.train_split, True), (dm.val_split, False)):
            raw = dm.raw_dataset(split)
            sample = raw[0]
            assert sample["image"].dtype == np.uint8 and sample["mask"].shape == sample["image"].shape[:2], name
            assert isinstance(sample["text"], str) and sample["text"] and isinstance(sample["image_id"], str), name
    assert os.path.isdir(tmp_path / "fixtures" / "refcoco")


def test_refcoco_through_lightning_cli_yaml(roots, tmp_path):
    """The eval YAMLs' data section parses with LightningCLI's parser (subclass mode)."""
    from jsonargparse import ArgumentParser

    from datamodules.base import RefSegDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(RefSegDataModule, "data")
    cfg = parser.parse_args(["--data", "datamodules.RefCocoDataModule", "--data.root", str(roots["refer"]),
                             "--data.dataset", "refcoco+", "--data.test_split", "testB"])
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, RefCocoDataModule) and dm.test_split == "testB" and len(dm.raw_dataset("testB")) > 0


def test_eval_experiment_files_load_on_fixtures(tmp_path, monkeypatch):
    """Each experiments/eval/*.yaml (a data section or a list of test_sets), pointed at a fixture, yields its test split."""
    from pathlib import Path

    import yaml
    from jsonargparse import ArgumentParser

    from datamodules.base import RefSegDataModule
    from evf.lightning_cli import build_datamodule, import_class

    monkeypatch.setenv("EVF_GENERATED", str(tmp_path))
    files = sorted((Path(__file__).parents[1] / "experiments" / "eval").glob("*.yaml"))
    assert [f.stem for f in files] == ["ade20k", "pascal_part", "reasonseg_test", "reasonseg_val", "refcoco", "tab11"]
    parser = ArgumentParser()
    parser.add_subclass_arguments(RefSegDataModule, "data")
    built = []
    for path in files:
        config = yaml.safe_load(path.read_text())
        if "data" in config:
            data = {**config["data"], "init_args": {**config["data"]["init_args"], "root": "fixture"}}
            built.append((path.stem, parser.instantiate_classes(parser.parse_object({"data": data})).data))
        for entry in config.get("test_sets") or []:
            args = {k: v for k, v in entry.items() if k not in ("name", "class_path")}
            built.append((entry["name"], build_datamodule(import_class(entry["class_path"]), {**args, "root": "fixture"})))
    assert len(built) == 24
    for name, dm in built:
        assert len(dm.raw_dataset(dm.test_split)) > 0, name
