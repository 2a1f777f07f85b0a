"""Synthetic spatial benchmark: determinism, grammar semantics on hand-built scenes, vocabulary coverage."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from datamodules import DATAMODULES, SpatialRefDataModule
from datamodules.spatial import (
    FAMILY_WEIGHTS,
    SpatialRefDataset,
    candidates,
    family_of,
    generate_spatial_sample,
    generate_spatial_scene,
)
from datamodules.synthetic import COLORS, SHAPES, Shape, rasterize


def scene(*shapes: Shape, h: int = 80, w: int = 100):
    masks = [rasterize(s, h, w) for s in shapes]
    return list(shapes), masks


def lookup(found: dict, text: str) -> np.ndarray:
    matches = [m for family in found.values() for t, m in family if t == text]
    assert len(matches) == 1, f"{text!r} found {len(matches)} times"
    return matches[0]


def test_samples_are_deterministic_and_splits_differ():
    a, b = generate_spatial_sample(0, "test", 3), generate_spatial_sample(0, "test", 3)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"]) and a["text"] == b["text"]
    assert not np.array_equal(generate_spatial_sample(0, "train", 3)["image"], a["image"])
    assert not np.array_equal(generate_spatial_sample(1, "test", 3)["image"], a["image"])
    assert a["image"].dtype == np.uint8 and a["image"].shape[:2] == a["mask"].shape and a["mask"].dtype == bool


def test_relations_pick_the_right_member():
    left = Shape("circle", "red", 40, 20, 10)
    right = Shape("circle", "red", 40, 75, 14)
    blue = Shape("square", "blue", 15, 50, 8)
    shapes, masks = scene(left, right, blue)
    found = candidates(shapes, masks)
    assert np.array_equal(lookup(found, "the red circle on the left"), masks[0])
    assert np.array_equal(lookup(found, "the red circle on the right"), masks[1])
    assert np.array_equal(lookup(found, "the largest red circle"), masks[1])
    assert np.array_equal(lookup(found, "the smallest circle"), masks[0])
    assert np.array_equal(lookup(found, "the blue square"), masks[2])
    assert np.array_equal(lookup(found, "[semantic] circle"), masks[0] | masks[1])
    assert np.array_equal(lookup(found, "[semantic] red shape"), masks[0] | masks[1])
    # No relation without a clear margin (same height) and no attribute for a duplicated colour+shape.
    texts = {t for family in found.values() for t, _ in family}
    assert "the top red circle" not in texts and "the red circle" not in texts
    assert not any("square on the" in t for t in texts)  # a group of one needs no relation


def test_next_to_needs_a_unique_anchor_and_a_clear_nearest():
    anchor = Shape("square", "green", 40, 50, 8)
    near = Shape("triangle", "red", 40, 25, 8)
    far = Shape("triangle", "red", 40, 95, 8)
    shapes, masks = scene(anchor, near, far, w=120)
    assert np.array_equal(lookup(candidates(shapes, masks), "the triangle next to the green square"), masks[1])
    shapes, masks = scene(anchor, near, Shape("triangle", "red", 40, 76, 8), w=120)  # equally near: ambiguous
    assert not any("next to" in t for t, _ in candidates(shapes, masks)["next_to"])


def test_split_statistics_favour_relations():
    samples = [generate_spatial_sample(0, "val", i) for i in range(200)]
    families = collections.Counter(s["family"] for s in samples)
    assert set(families) == set(FAMILY_WEIGHTS)
    assert families["relation"] + families["next_to"] > 0.6 * len(samples)
    assert all(s["mask"].sum() >= 4 for s in samples)
    assert all(family_of(s["text"]) == s["family"] for s in samples)


def test_vocabulary_has_no_unknown_tokens():
    """Every word of the grammar is in TOY_WORDS, so the toy BEiT-3 tokenizer never emits <unk>."""
    from evf.tokenizer import TOY_WORDS, XlmrTokenizer, toy_tokenizer_dir

    # every expression each scene supports (not only the one drawn), so a few scenes reach the whole grammar
    scenes = [generate_spatial_scene(0, split, i)[1:] for split in ("train", "test") for i in range(20)]
    texts = {t for shapes, masks in scenes for family in candidates(shapes, masks).values() for t, _ in family}
    words = {w for t in texts for w in t.split() if w != "[semantic]"}
    grammar = {"the", "on", "left", "right", "top", "bottom", "largest", "smallest", "next", "to", "shape"}
    assert words >= grammar | set(COLORS) | set(SHAPES), (grammar | set(COLORS) | set(SHAPES)) - words
    assert words <= set(TOY_WORDS), words - set(TOY_WORDS)
    tok = XlmrTokenizer(toy_tokenizer_dir())
    unk = tok.tok.unk_token_id
    for text in texts:
        assert unk not in tok.encode(text), text
    assert tok.semantic_id in tok.encode("[semantic] circle")


def test_datamodule_registered_and_batches(tiny_model):
    assert "spatial" in DATAMODULES and DATAMODULES.get("spatial").cls is SpatialRefDataModule
    dm = SpatialRefDataModule(train_size=4, val_size=2, test_size=3, batch_size=2).attach(tiny_model.preprocessor())
    batch = next(iter(dm.loader("test")))
    assert batch["enc_images"].shape == (2, 3, 32, 32) and len(batch["masks"]) == 2
    assert len(dm.raw_dataset("test")) == 3
    with pytest.raises(IndexError):
        SpatialRefDataset("test", 3)[3]
    with pytest.raises(ValueError, match="unknown split"):
        SpatialRefDataset("dev", 3)


def test_family_scores_from_prediction_files(tmp_path):
    from datamodules.spatial import family_scores

    path = tmp_path / "p.jsonl"
    path.write_text('{"sentence": "the top red circle", "I": 1, "U": 4, "IoU": 0.25}\n'
                    '{"sentence": "the circle on the left", "I": 3, "U": 4, "IoU": 0.75}\n'
                    '{"sentence": "[semantic] circle", "I": 0, "U": 0, "IoU": 1.0}\n')
    scores = family_scores([path])
    assert scores["relation"] == {"cIoU": 0.5, "gIoU": 0.5, "samples": 2}
    assert scores["semantic"] == {"cIoU": 1.0, "gIoU": 1.0, "samples": 1}


def test_words_only_bound_contains_target_and_is_ambiguous_for_relations():
    from datamodules.spatial import generate_spatial_scene, words_only_mask

    for i in range(60):
        sample, shapes, masks = generate_spatial_scene(0, "test", i)
        guess = words_only_mask(sample["text"], shapes, masks)
        assert np.array_equal(guess & sample["mask"], sample["mask"]), sample["text"]
        if sample["family"] in ("relation", "next_to"):  # the words name a set; the image picks the member
            assert guess.sum() > sample["mask"].sum(), sample["text"]
        else:
            assert np.array_equal(guess, sample["mask"]), sample["text"]
