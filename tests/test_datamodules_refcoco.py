"""RefCOCO family (refer layout) and gRefCOCO: fixtures in the real format round-trip exactly."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from datamodules.refcoco import GRefCocoDataModule, RefCocoDataModule
from datamodules.testing import grefcoco as grefcoco_fixture
from datamodules.testing import refcoco as refcoco_fixture
from evf.io import ImageReadError
from evf.safe_pickle import UnsafePickleError, load_plain_pickle, loads_plain


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return refcoco_fixture.write(tmp_path_factory.mktemp("refer"))


@pytest.fixture(scope="module")
def grefer(tmp_path_factory):
    return grefcoco_fixture.write(tmp_path_factory.mktemp("grefer"))


def assert_samples_equal(raw, expected):
    assert len(raw) == len(expected)
    for i, want in enumerate(expected):
        got = raw[i]
        assert (got["id"], got["image_id"], got["text"]) == (want["id"], want["image_id"], want["text"])
        assert got["mask"].dtype == bool and np.array_equal(got["mask"], want["mask"]), f"sample {i} mask differs"
        assert got["image"].dtype == np.uint8 and got["image"].shape == (*want["mask"].shape, 3)


def test_every_dataset_split_round_trips_pixel_for_pixel(refer):
    """Polygons (RefCOCO/+/g, one empty segmentation) and RLE (RefCLEF), one sample per sentence."""
    assert len(refer["samples"]) == 20
    for (dataset, split_by, split), expected in refer["samples"].items():
        dm = RefCocoDataModule(str(refer["root"]), dataset=dataset, split_by=split_by)
        assert_samples_equal(dm.raw_dataset(split, train=False), expected)
    assert any(not s["mask"].any() for s in refer["samples"][("refcoco", "unc", "train")] +
               refer["samples"][("refcoco", "unc", "val")] + refer["samples"][("refcoco", "unc", "testA")]
               + refer["samples"][("refcoco", "unc", "testB")])  # the empty-segmentation case is exercised


def test_test_split_is_union_of_testA_and_testB(refer):
    s = refer["samples"]
    assert len(s[("refcoco", "unc", "test")]) == len(s[("refcoco", "unc", "testA")]) + len(s[("refcoco", "unc", "testB")])


def test_train_mode_one_sample_per_ref_with_seeded_sentence(refer):
    root = str(refer["root"])
    dm = RefCocoDataModule(root, dataset="refcocog", split_by="umd", seed=3)
    train = dm.raw_dataset("train")
    refs = [r for r in refer["refs"][("refcocog", "umd")] if r["split"] == "train"]
    assert len(train) == refer["train_refs"][("refcocog", "umd")] == len(refs)
    again = RefCocoDataModule(root, dataset="refcocog", split_by="umd", seed=3).raw_dataset("train")
    n = len(train)
    for epoch in range(4):
        for i in range(n):
            a, b = train[epoch * n + i], again[epoch * n + i]
            assert a["text"] == b["text"] and a["id"] == b["id"]  # same seed -> same stream
            assert a["text"] in [s["sent"] for s in refs[i]["sentences"]]
    multi = [i for i, r in enumerate(refs) if len(r["sentences"]) > 1]
    assert multi, "fixture should have a ref with several sentences"
    texts = {train[e * n + multi[0]]["text"] for e in range(12)}
    assert len(texts) > 1  # the sentence changes across epochs
    with pytest.raises(IndexError):
        dm.raw_dataset("val", train=False)[10_000]


def test_grefcoco_union_crowd_and_no_target(grefer):
    assert sum(len(v) for v in grefer["samples"].values()) > 0
    for split, expected in grefer["samples"].items():
        assert_samples_equal(GRefCocoDataModule(str(grefer["root"])).raw_dataset(split, train=False), expected)
    empties = [s for v in grefer["samples"].values() for s in v if not s["mask"].any()]
    assert empties  # no-target expressions give empty masks


def test_restricted_unpickler_refuses_globals(tmp_path, refer):
    root = tmp_path / "refer"
    shutil.copytree(refer["root"], root)
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    refs_file = root / "refcoco" / "refs(unc).p"
    refs_file.write_bytes(pickle.dumps([{"ref_id": 1, "x": Evil()}], protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        RefCocoDataModule(str(root)).raw_dataset("val")
    message = str(err.value)
    assert "\n" not in message and str(refs_file) in message and "forbidden global 'io.open'" in message
    assert not sentinel.exists()
    assert loads_plain(pickle.dumps({"a": [1, 2.5, "x", None, True, (3,)], "s": {1, 2}}, protocol=2)) == \
        {"a": [1, 2.5, "x", None, True, (3,)], "s": {1, 2}}
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(root / "refcoco" / "instances.json")


def test_bad_inputs_name_the_file(tmp_path, refer):
    with pytest.raises(FileNotFoundError, match="dataset root not found: .*nowhere"):
        RefCocoDataModule(str(tmp_path / "nowhere"))
    root = tmp_path / "refer"
    shutil.copytree(refer["root"], root)
    (root / "refcoco+" / "refs(unc).p").unlink()
    with pytest.raises(FileNotFoundError, match=r"refs file not found: .*refcoco\+/refs\(unc\)\.p"):
        RefCocoDataModule(str(root), dataset="refcoco+").raw_dataset("val")
    with pytest.raises(ValueError, match="no refs in split 'bogus'"):
        RefCocoDataModule(str(root)).raw_dataset("bogus")
    with pytest.raises(ValueError, match="has no 'google' split"):
        RefCocoDataModule(str(root), dataset="refcoco+", split_by="google")
    raw = RefCocoDataModule(str(root)).raw_dataset("val", train=False)
    broken = raw.image_path(0)
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError) as err:
        raw[0]
    assert str(broken) in str(err.value) and "\n" not in str(err.value)
