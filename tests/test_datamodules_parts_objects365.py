"""Part data (Pascal-Part, PartImageNet), Objects365's one-instance filter and the SAM box-prompt pre-pass."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datamodules import objects365, prepare
from datamodules.objects365 import Objects365DataModule, one_instance_annotations
from datamodules.parts import PartImageNetDataModule, PascalPartDataModule, part_phrase
from datamodules.testing import objects365 as o365_fixture
from datamodules.testing import partimagenet, pascal_part


@pytest.mark.parametrize("writer,cls", [(pascal_part, PascalPartDataModule), (partimagenet, PartImageNetDataModule)])
def test_part_instances_of_a_category_are_merged(tmp_path, writer, cls):
    info = writer.write(tmp_path / "parts")
    for split, expected in info["samples"].items():
        raw = cls(str(info["root"])).raw_dataset(split, train=False)
        assert len(raw) == len(expected)
        for i, want in enumerate(expected):
            got = raw[i]
            assert (got["id"], got["image_id"], got["text"]) == (want["id"], want["image_id"], want["text"])
            assert np.array_equal(got["mask"], want["mask"])
        train = cls(str(info["root"])).raw_dataset(split, train=True)
        assert len(train) == info["images"][split]


def test_part_phrases():
    assert part_phrase({"name": "person:lower_arm"}) == "person lower arm"
    assert part_phrase({"name": "Quadruped Head", "supercategory": "Quadruped"}) == "quadruped head"
    assert part_phrase({"name": "Fin", "supercategory": "Fish"}) == "fish fin"


@pytest.fixture()
def o365(tmp_path):
    return o365_fixture.write(tmp_path / "objects365")


def test_one_instance_filter_keeps_exactly_the_single_categories(o365):
    coco = json.loads((o365["root"] / "train" / "zhiyuan_objv2_train.json").read_text())
    kept = one_instance_annotations(coco["annotations"])
    by_image = {}
    for a in kept:
        by_image.setdefault(a["image_id"], []).append(a["id"])
    assert by_image == o365["train"]["kept"] == {40: [1, 4], 41: [8], 43: [14]}
    assert len(coco["annotations"]) == o365["train"]["before"]["annotations"] == 14


def test_objects365_datamodule_reads_prepared_masks_and_boxes(o365):
    for box_masks in (False, True):
        raw = Objects365DataModule(str(o365["root"]), box_masks=box_masks).raw_dataset("train", train=False)
        expected = o365["samples"]["train"]
        assert len(raw) == len(expected) == 4
        for i, want in enumerate(expected):
            got = raw[i]
            assert (got["id"], got["text"]) == (want["id"], want["text"]) and np.array_equal(got["mask"], want["mask"])
    with pytest.raises(FileNotFoundError, match="run 'evf prepare objects365"):
        Objects365DataModule(str(o365["root"]), masks_dir=str(o365["root"] / "nothing")).raw_dataset("val")


def run_prepass(root, out, *extra):
    return prepare.main(["objects365", "--root", str(root), "--backend", "sam1", "--tiny", "--out", str(out),
                         "--no-progress", *extra])


def test_prepass_writes_valid_rle_and_summary(o365, tmp_path):
    out = tmp_path / "masks"
    assert run_prepass(o365["root"], out) == 0
    coco = json.loads((out / "objects365_train.json").read_text())
    summary = json.loads((out / "summary_train.json").read_text())
    assert summary["before"] == o365["train"]["before"] and summary["after"] == o365["train"]["after"]
    assert summary["per_category"] == o365["train"]["per_category"]
    sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
    assert sorted(a["id"] for a in coco["annotations"]) == sorted(i for ids in o365["train"]["kept"].values() for i in ids)
    for ann in coco["annotations"]:
        rle = ann["segmentation"]
        assert tuple(rle["size"]) == sizes[ann["image_id"]] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == sizes[ann["image_id"]] and decoded.sum() == ann["area"]
    raw = Objects365DataModule(str(o365["root"]), masks_dir=str(out)).raw_dataset("train", train=False)
    assert len(raw) == 4 and raw[0]["mask"].shape == sizes[int(raw[0]["image_id"])]


def test_prepass_resumes_without_redoing_finished_images(o365, tmp_path, monkeypatch):
    out = tmp_path / "masks"
    calls = []
    real = objects365.segment_image
    monkeypatch.setattr(objects365, "segment_image", lambda *a: calls.append(1) or real(*a))
    assert run_prepass(o365["root"], out, "--limit", "1") == 0  # an "interrupted" run: one image done
    assert len(calls) == 1 and json.loads((out / "summary_train.json").read_text())["pending_images"] == 2
    shards = sorted((out / "shards_train").glob("*.json"))
    first = {p.name: p.stat().st_mtime_ns for p in shards}
    assert run_prepass(o365["root"], out) == 0
    assert len(calls) == 3  # only the two missing images were segmented
    assert {p.name: p.stat().st_mtime_ns for p in shards} == first
    assert json.loads((out / "summary_train.json").read_text())["after"] == o365["train"]["after"]
    assert run_prepass(o365["root"], out) == 0 and len(calls) == 3  # nothing left to do


def test_prepass_bad_inputs(o365, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        run_prepass(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(prepare.UserError, match="unknown SAM backend 'nope'"):
        prepare.main(["objects365", "--root", str(o365["root"]), "--backend", "nope", "--out", str(tmp_path / "o")])
    with pytest.raises(prepare.UserError, match="has no pre-pass"):
        prepare.main(["ade20k", "--root", str(o365["root"])])
