"""Semantic-level data (ADE20K, Mapillary Vistas, LIP/CIHP) and the ``[semantic]`` prompt."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from datamodules.humanparsing import HumanParsingDataModule, viewer_side
from datamodules.semantic import ADE20KDataModule, MapillaryVistasDataModule, read_ade_classes
from datamodules.testing import ade20k, humanparsing, mapillary
from evf.io import ImageReadError, read_mask


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return ade20k.write(tmp_path_factory.mktemp("ade"))


def assert_round_trip(raw, expected):
    assert len(raw) == len(expected)
    for i, want in enumerate(expected):
        got = raw[i]
        assert (got["id"], got["image_id"], got["text"]) == (want["id"], want["image_id"], want["text"])
        assert np.array_equal(got["mask"], want["mask"])


def test_ade20k_one_sample_per_image_and_present_category(ade):
    for split, expected in ade["samples"].items():
        assert_round_trip(ADE20KDataModule(str(ade["root"])).raw_dataset(split, train=False), expected)


def test_semantic_mask_is_exactly_the_category_pixels(ade):
    raw = ADE20KDataModule(str(ade["root"])).raw_dataset("val", train=False)
    for i in range(len(raw)):
        sample, (index, value) = raw[i], raw.items[i]
        labels = read_mask(raw.pairs[index][2])
        assert np.array_equal(sample["mask"], labels == value) and sample["mask"].any()
        assert sample["text"] == f"[semantic] {ade['names'][value]}"


def test_ade20k_train_draws_a_present_category_per_image(ade):
    train = ADE20KDataModule(str(ade["root"]), seed=1).raw_dataset("train")
    assert len(train) == ade["images"]["train"]
    texts = {s["text"] for s in ade["samples"]["train"]}
    for p in range(3 * len(train)):
        sample = train[p]
        assert sample["text"] in texts and sample["mask"].any()
    assert [train[p]["text"] for p in range(6)] == [ADE20KDataModule(str(ade["root"]), seed=1).raw_dataset("train")[p]["text"]
                                                   for p in range(6)]


def test_ade20k_class_list_txt_and_csv(tmp_path, ade):
    names = read_ade_classes(ade["root"] / "objectInfo150.txt")
    assert names[2] == "building" and names[8] == "bed" and len(names) == 8
    csv_file = tmp_path / "objectInfo150.csv"
    csv_file.write_text("Idx,Ratio,Train,Val,Stuff,Name\n1,0.1,1,1,1,wall\n2,0.1,1,1,0,building;edifice\n")
    assert read_ade_classes(csv_file) == {1: "wall", 2: "building"}


def test_mapillary_v12_round_trip_skips_unevaluated(tmp_path):
    info = mapillary.write(tmp_path / "vistas")
    for split, expected in info["samples"].items():
        assert_round_trip(MapillaryVistasDataModule(str(info["root"])).raw_dataset(split, train=False), expected)
    assert all("unlabeled" not in s["text"] for v in info["samples"].values() for s in v)


@pytest.mark.parametrize("layout", ["lip", "cihp"])
def test_human_parsing_viewer_side_swap(tmp_path, layout):
    info = humanparsing.write(tmp_path / layout, layout=layout)
    for split, expected in info["samples"].items():
        assert_round_trip(HumanParsingDataModule(str(info["root"]), layout=layout).raw_dataset(split, train=False), expected)
        person = HumanParsingDataModule(str(info["root"]), layout=layout, side="person").raw_dataset(split, train=False)
        assert [person[i]["text"] for i in range(len(person))] == info["person_side"][split]
    renamed = HumanParsingDataModule(str(info["root"]), layout=layout, rename={"left arm": "arm on the right"})
    assert renamed.names[14] == "arm on the right" and renamed.names[15] == "left arm"
    assert viewer_side("left shoe") == "right shoe" and viewer_side("hair") == "hair"


def test_semantic_token_is_one_id_through_the_real_loader(ade, tiny_model):
    """``[semantic]`` reaches the model as ONE token id, right after ``<s>``, in every prompt of a batch."""
    tok = tiny_model.encoder.tokenizer
    ids = tok.encode("[semantic] sky")
    assert ids.count(tok.semantic_id) == 1 and ids[1] == tok.semantic_id
    assert len(tok.encode("[semantic]")) == 3  # <s> [semantic] </s>
    dm = ADE20KDataModule(str(ade["root"]), batch_size=2, eval_batch_size=3).attach(tiny_model.preprocessor())
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 3
    assert (batch["input_ids"][:, 1] == tok.semantic_id).all()
    assert ((batch["input_ids"] == tok.semantic_id).sum(dim=1) == 1).all()
    assert all(m.shape == tuple(s.tolist()) for m, s in zip(batch["masks"], batch["original_sizes"]))


def test_semantic_bad_inputs_name_the_file(tmp_path, ade):
    root = tmp_path / "ade"
    shutil.copytree(ade["root"], root)
    shutil.rmtree(root / "annotations" / "validation")
    with pytest.raises(FileNotFoundError, match="label folder not found: .*annotations/validation"):
        ADE20KDataModule(str(root)).raw_dataset("val")
    label = min((root / "annotations" / "training").glob("*.png"))
    label.write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageReadError, match=str(label)):
        ADE20KDataModule(str(root)).raw_dataset("train", train=False)
    (root / "objectInfo150.txt").unlink()
    with pytest.raises(FileNotFoundError, match="ADE20K class list not found"):
        ADE20KDataModule(str(root)).raw_dataset("train")
