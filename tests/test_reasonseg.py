"""ReasonSeg: the released layout read as LISA's loader reads it, ignore regions out of I and U, the experiment files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datamodules.check import check_dataset
from datamodules.common import DatasetFileError
from datamodules.reasonseg import ReasonSegDataModule, label_map
from datamodules.testing import reasonseg
from evf.config_errors import ConfigError
from evf.metrics import ReferringSegmentationMetrics, per_sample


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return reasonseg.write(tmp_path_factory.mktemp("reasonseg"))


def mask(rows: list[str], on: str = "#") -> torch.Tensor:
    return torch.tensor([[c == on for c in row] for row in rows])


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_samples_match_the_written_polygons(fixture, split):
    """One sample per image with its first instruction; target and ignore pixels exactly as painted (flag shapes
    skipped, vertices truncated, regions clipped, smaller regions over larger ones, one cp1252 file)."""
    raw = ReasonSegDataModule(str(fixture["root"])).raw_dataset(split)
    expected = fixture["samples"][split]
    assert len(raw) == len(expected) == fixture["images"][split]
    for k, want in enumerate(expected):
        got = raw[k]
        assert (got["id"], got["image_id"], got["text"]) == (want["id"], want["image_id"], want["text"])
        assert np.array_equal(got["mask"], want["mask"]) and np.array_equal(got["ignore_mask"], want["ignore"]), want["id"]
        assert got["mask"].shape == got["image"].shape[:2]
    assert any(s["text"] == "the café sign" for s in expected) or split != "val"
    assert any(not s["mask"].any() for s in expected) == (split == "test")  # the test split's empty target


def test_label_map_paints_smaller_regions_last():
    square = np.array([[0, 0], [5, 0], [5, 5], [0, 5]], dtype=float)  # 6x6 with inclusive vertices
    inner = np.array([[2.9, 2.2], [3.7, 2.2], [3.7, 3.99], [2.9, 3.99]])  # truncated to 2..3 x 2..3
    for big, small, value in (("target", "ignore", 255), ("ignore", "target", 1)):
        for shapes in ([(big, square), (small, inner)], [(small, inner), (big, square)]):  # file order does not matter
            labels = label_map(shapes, 8, 8)
            assert labels[2:4, 2:4].tolist() == [[value] * 2] * 2
            assert int((labels == (1 if big == "target" else 255)).sum()) == 36 - 4
            assert int((labels == 0).sum()) == 64 - 36


def test_train_mode_draws_an_instruction_per_image_without_ignore(fixture):
    dm = ReasonSegDataModule(str(fixture["root"]), seed=3)
    train = dm.raw_dataset("train")
    expected = fixture["samples"]["train"]
    assert len(train) == len(expected)
    for position in range(2 * len(train)):
        got, want = train[position], expected[position % len(train)]
        assert got["text"] in want["texts"] and "ignore_mask" not in got
        assert np.array_equal(got["mask"], want["mask"])  # ignore pixels count as background in training
        assert got["text"] == ReasonSegDataModule(str(fixture["root"]), seed=3).raw_dataset("train")[position]["text"]


def test_query_types_and_all_sentences(fixture):
    root, expected = str(fixture["root"]), fixture["samples"]["test"]
    short = ReasonSegDataModule(root, queries="short").raw_dataset("test")
    long = ReasonSegDataModule(root, queries="long").raw_dataset("test")
    assert [s["id"] for s in expected if not s["is_sentence"]] == [short[k]["id"] for k in range(len(short))]
    assert [s["id"] for s in expected if s["is_sentence"]] == [long[k]["id"] for k in range(len(long))]
    every = ReasonSegDataModule(root, sentences="all").raw_dataset("test")
    assert [every[k]["text"] for k in range(len(every))] == [t for s in expected for t in s["texts"]]
    with pytest.raises(ConfigError, match="queries must be one of"):
        ReasonSegDataModule(root, queries="medium")


def test_ignore_pixels_leave_intersection_and_union():
    """Hand count: without ignore I=2, U=6; the ignore pixels hold one false alarm and one miss: U=4."""
    pred = mask(["##..", "##..", "...."])
    target = mask(["#...", "#...", "##.."])
    ignore = mask(["....", ".i..", ".i.."], on="i")
    assert per_sample([pred], [target]).tolist() == [[2.0, 6.0, 1 / 3]]
    assert per_sample([pred], [target], [ignore]).tolist() == [[2.0, 4.0, 0.5]]
    everything = torch.ones(3, 4, dtype=torch.bool)  # only ignore pixels: empty on both sides, IoU 1
    assert per_sample([pred], [target], [everything]).tolist() == [[0.0, 0.0, 1.0]]
    metric = ReferringSegmentationMetrics()
    metric.update([pred, pred], [target, target], [ignore, None])
    values = metric.compute()
    assert float(values["cIoU"]) == 4 / 10 and float(values["gIoU"]) == pytest.approx((0.5 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="ignore mask .* differ in size"):
        metric.update([pred], [target], [ignore[:2]])


def test_ignore_handling_is_exact_under_splitting_and_order():
    generator = torch.Generator().manual_seed(1)
    sizes = [(int(h), int(w)) for h, w in torch.randint(3, 9, (13, 2), generator=generator)]
    preds = [torch.rand(s, generator=generator) > 0.5 for s in sizes]
    targets = [torch.rand(s, generator=generator) > 0.6 for s in sizes]
    ignores = [torch.rand(s, generator=generator) > 0.8 if k % 3 else None for k, s in enumerate(sizes)]

    def floats(metric):
        return {k: None if math.isnan(float(v)) else float(v) for k, v in metric.compute().items()}

    whole = ReferringSegmentationMetrics()
    whole.update(preds, targets, ignores)
    reference = floats(whole)
    rows = per_sample(preds, targets, ignores)
    assert reference["cIoU"] == float(rows[:, 0].sum() / rows[:, 1].sum())
    ranks = [ReferringSegmentationMetrics() for _ in range(3)]
    for k in reversed(range(len(preds))):  # reversed order, dealt over three "processes", merged as a sync reduces
        ranks[k % 3].update([preds[k]], [targets[k]], [ignores[k]])
    ranks[0].merge_state(ranks[1])
    ranks[0].merge_state(ranks[2])
    assert floats(ranks[0]) == reference


def test_batches_carry_ignore_masks_to_the_evaluator(fixture, tiny_model):
    from evf.module import EVFSAMModule

    dm = ReasonSegDataModule(str(fixture["root"]), eval_batch_size=4).attach(tiny_model.preprocessor())
    batch = next(iter(dm.test_dataloader()))
    assert [m.shape for m in batch["ignore_masks"]] == [m.shape for m in batch["masks"]]
    module, metric = EVFSAMModule(tiny_model), ReferringSegmentationMetrics()
    with torch.no_grad():
        preds = module.evaluate(batch, metric)
    want = per_sample(preds, batch["masks"], [torch.as_tensor(s["ignore"]) for s in fixture["samples"]["test"]])
    assert float(metric.compute()["cIoU"]) == float(want[:, 0].sum() / want[:, 1].sum())


def test_check_reports_like_the_other_datasets(fixture, tmp_path):
    reports = check_dataset("reasonseg", fixture["root"], progress=False)
    assert [(r.split, r.items, r.fatal) for r in reports] == [("train", 3, False), ("val", 3, False), ("test", 4, False)]
    assert len(reports[2].problems["empty masks"]) == 1  # a warning: one empty target in four
    broken = reasonseg.write(tmp_path / "broken")["root"]
    next((broken / "val").glob("*.jpg")).unlink()
    assert check_dataset("reasonseg", broken, ["val"], progress=False)[0].problems["missing images"]
    bad = next((broken / "test").glob("*.json"))
    bad.write_text('{"text": ["x"], "is_sentence": "yes", "shapes": []}')
    with pytest.raises(DatasetFileError, match=f"{bad.name}: 'is_sentence' must be true or false"):
        check_dataset("reasonseg", broken, ["test"], progress=False)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_tab11_rows_add_the_semantic_sources_to_the_refcoco_family():
    rows = {"tab11_refcoco": set(), "tab11_refcoco_ade20k": {"ade20k"}, "tab11_refcoco_mapillary": {"mapillary"},
            "tab11_refcoco_ade20k_mapillary": {"ade20k", "mapillary"}}
    for row, extra in rows.items():
        data = yaml.safe_load((EXPERIMENTS / "ablations" / f"{row}.yaml").read_text())["data"]
        sources = data["init_args"]["sources"]
        assert data["class_path"] == "datamodules.HybridDataModule" and data["init_args"]["eval_source"] == "refcoco"
        assert {s["type"] for s in sources.values()} == {"refcoco"} | extra, row
        assert sorted(s["dataset"] for s in sources.values() if s["type"] == "refcoco") == ["refcoco", "refcoco+", "refcocog"]
    names = [e["name"] for e in yaml.safe_load((EXPERIMENTS / "eval" / "tab11.yaml").read_text())["test_sets"]]
    assert names[-1] == "ade20k/val" and len(names) == 9


def test_reasonseg_eval_files_name_their_splits_and_query_types():
    val = yaml.safe_load((EXPERIMENTS / "eval" / "reasonseg_val.yaml").read_text())["data"]
    test = yaml.safe_load((EXPERIMENTS / "eval" / "reasonseg_test.yaml").read_text())
    assert val["class_path"] == test["data"]["class_path"] == "datamodules.ReasonSegDataModule"
    assert val["init_args"]["test_split"] == "val"
    assert [(e["test_split"], e.get("queries", "all")) for e in test["test_sets"]] == [
        ("test", "all"), ("test", "short"), ("test", "long")]


@pytest.mark.slow
def test_finetune_recipe_starts_from_a_release_folder_and_tests_reasonseg(release, tmp_path, monkeypatch):
    """experiments/paper/reasonseg_finetune.yaml on the fixture, with the tiny preset and a tiny release folder."""
    import json

    from evf.cli import main

    monkeypatch.setenv("EVF_GENERATED", str(tmp_path / "generated"))
    run = tmp_path / "run"
    assert main(["fit", "--config", str(EXPERIMENTS / "base.yaml"), "--config", str(EXPERIMENTS / "paper" / "reasonseg_finetune.yaml"),
                 "--model.model.init_args.name", "tiny-beit3-sam1", "--model.model.init_args.checkpoint", str(release),
                 "--data.init_args.root", "fixture", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
                 "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
                 "--trainer.val_check_interval", "2", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--run_dir", str(run)]) == 0
    results = json.loads((run / "metrics.json").read_text())["test"]
    metrics, = results.values()
    assert metrics["samples"] == 4 and 0.0 <= metrics["cIoU"] <= 1.0
