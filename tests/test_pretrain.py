"""`python -m studies.fusion.pretrain`: miniature pre-training of the tiny SAM-1 and encoders, saved in the formats the plugins load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.synthetic import Shape
from studies.fusion.pretrain import (
    OUTPUTS,
    build_encoder,
    caption_batch,
    grounding_batch,
    grounding_probe,
    location_probe,
    main,
    mask_tokens,
    pretrain_encoder,
    pretrain_sam,
    sam_prompt,
    save_encoder,
    scene_caption,
)


def test_scene_caption_names_each_visible_object_with_its_cell_in_random_order():
    shapes = [Shape("circle", "red", 10, 10, 5), Shape("square", "blue", 50, 85, 5), Shape("star", "green", 80, 5, 5)]
    masks = [np.ones((4, 4), bool), np.ones((4, 4), bool), np.zeros((4, 4), bool)]  # the third is hidden
    captions = {scene_caption(shapes, masks, 90, 90, np.random.default_rng(k)) for k in range(20)}
    assert captions == {"red circle top left and blue square middle right", "blue square middle right and red circle top left"}
    assert scene_caption(shapes, masks, 90, 90, np.random.default_rng(0), objects=1) in {"red circle top left", "blue square middle right"}


def test_mask_tokens_skips_bos_eos_and_padding():
    ids = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 5, 2, 1, 1, 1]])
    padding = torch.tensor([[False] * 6, [False, False, False, True, True, True]])
    chosen = mask_tokens(np.random.default_rng(0), ids, padding, prob=0.5)
    assert chosen.sum(1).tolist() == [2, 1]  # half of the 4 inner tokens; at least one of a single inner token
    assert not chosen[:, 0].any() and not chosen[0, 5] and chosen[1].tolist() == [False, True, False, False, False, False]


def test_sam_prompt_is_a_box_around_the_mask_or_a_point_inside_it():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 12:20] = True
    rng, kinds = np.random.default_rng(0), set()
    for _ in range(20):
        prompt = sam_prompt(rng, mask, scale=2.0)
        if "boxes" in prompt:
            x0, y0, x1, y1 = prompt["boxes"][0].tolist()
            assert abs(x0 - 24) <= 1.6 and abs(y0 - 10) <= 1.0 and abs(x1 - 40) <= 1.6 and abs(y1 - 20) <= 1.0  # 10 % jitter
        else:
            (x, y), label = prompt["points"][0][0, 0].tolist(), prompt["points"][1].item()
            assert label == 1 and mask[int(y / 2), int(x / 2)]
        kinds |= set(prompt)
    assert kinds == {"boxes", "points"}


@pytest.mark.slow
def test_sam_pretraining_lowers_the_loss():
    from evf.sam import Sam1Backend

    torch.manual_seed(0)
    losses = pretrain_sam(Sam1Backend(variant="tiny"), steps=40, batch_size=4, lr=3e-3, log=None)
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8])


def test_sam_pretraining_restores_the_frozen_split_and_saves_what_the_backend_loads(tmp_path):
    from evf.sam import Sam1Backend

    torch.manual_seed(0)
    sam = Sam1Backend(variant="tiny")
    before = {k: v.clone() for k, v in sam.model.mask_decoder.state_dict().items()}
    losses = pretrain_sam(sam, steps=2, batch_size=2, lr=3e-3, log=None)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(before[k], v) for k, v in sam.model.mask_decoder.state_dict().items())  # it trained
    assert not any(p.requires_grad for p in sam.model.image_encoder.parameters())  # frozen again, as the backend expects
    torch.save(sam.model.state_dict(), tmp_path / OUTPUTS["sam"])
    loaded = Sam1Backend(variant="tiny", checkpoint=str(tmp_path / OUTPUTS["sam"]))
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("family", ["beit3", "vilt", "clip"])
def test_encoder_pretraining_saves_what_the_plugin_loads(tmp_path, family):
    from evf.encoders import Beit3Encoder, ClipEncoder, ViltEncoder

    torch.manual_seed(0)
    encoder = build_encoder(family)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    objective = pretrain_encoder(encoder, steps=3, batch_size=4, log=None)
    assert len(objective.losses) == 3 and all(np.isfinite(objective.losses))
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    path = tmp_path / OUTPUTS[family]
    save_encoder(family, encoder, path)
    loaded = {"beit3": lambda: Beit3Encoder(size="tiny", mode="early", checkpoint=str(path)),
              "vilt": lambda: ViltEncoder(pretrained=str(path), mode="early"),
              "clip": lambda: ClipEncoder(model="tiny", mode="late", checkpoint=str(path))}[family]()
    images, text, _ = caption_batch(np.random.default_rng(1), encoder, 2)
    encoder.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(encoder(images, text["input_ids"], text["padding_mask"]),
                           loaded(images, text["input_ids"], text["padding_mask"]))


def test_location_probe_scores_a_text_only_guesser_equal_on_both_images(monkeypatch):
    from studies.fusion.pretrain import encoders

    torch.manual_seed(0)
    objective = pretrain_encoder(build_encoder("beit3"), steps=2, batch_size=4, log=None)
    asked = []
    real = encoders.caption_batch
    monkeypatch.setattr(encoders, "caption_batch", lambda *a, **k: asked.append(k) or real(*a, **k))
    probe = location_probe(objective, samples=64)
    # only matched pairs: a negative's "own" image is another scene's, which would blur the two numbers together
    assert asked and all(k.get("negatives") is False for k in asked)
    assert set(probe) == {"own image", "other image"} and all(0.0 <= v <= 1.0 for v in probe.values())
    objective.fused = lambda images, ids, padding: (torch.zeros(*ids.shape, objective.mlm_head.in_features), None)
    blind = location_probe(objective, samples=64)
    assert blind["own image"] == blind["other image"]  # a model that ignores the image cannot tell them apart


@pytest.mark.slow
def test_cli_writes_weights_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "weights"
    assert main(["--out", str(out), "--what", "beit3", "--encoder_steps", "2"]) == 0
    weights = out / OUTPUTS["beit3"]
    stamp = weights.stat().st_mtime_ns
    assert "masked location words right" in capsys.readouterr().out
    assert main(["--out", str(out), "--what", "beit3", "--encoder_steps", "2"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == stamp and sorted(p.name for p in out.iterdir()) == [OUTPUTS["beit3"]]


def test_grounding_batch_names_a_unique_object_and_its_cell():
    from studies.fusion.pretrain.scenes import caption_scene

    encoder = build_encoder("beit3")
    images, text, cells = grounding_batch(np.random.default_rng(5), encoder, 6)
    assert images.shape == (6, 3, 32, 32) and cells.shape == (6,) and cells.min() >= 0 and cells.max() <= 8
    # replay the generator to check each caption against its scene
    rng = np.random.default_rng(5)
    for k in range(6):
        while True:
            image, shapes, masks = caption_scene(rng)
            unique = [s for s, m in zip(shapes, masks) if m.sum() >= 4 and sum(o.color == s.color and o.kind == s.kind for o in shapes) == 1]
            if unique:
                break
        s = unique[int(rng.integers(len(unique)))]
        h, w = image.shape[:2]
        assert encoder.tokenizer([f"{s.color} {s.kind}"])["input_ids"][0].tolist() == \
            text["input_ids"][k][~text["padding_mask"][k]].tolist()
        assert int(cells[k]) == 3 * min(2, int(3 * s.cy / h)) + min(2, int(3 * s.cx / w))


def test_grounding_pretraining_and_probe():
    torch.manual_seed(0)
    objective = pretrain_encoder(build_encoder("vilt"), steps=2, batch_size=4, grounding=True, log=None)
    assert len(objective.losses) == 2 and all(np.isfinite(objective.losses))
    probe = grounding_probe(objective, samples=64)
    assert set(probe) == {"own image", "other image"} and all(0.0 <= v <= 1.0 for v in probe.values())
    with pytest.raises(ValueError, match="fusion encoder"):
        pretrain_encoder(build_encoder("clip"), steps=1, grounding=True, log=None)


@pytest.mark.slow
def test_cli_grounding_writes_grounded_weights_and_rejects_clip(tmp_path, capsys):
    out = tmp_path / "weights"
    assert main(["--out", str(out), "--what", "beit3", "--grounding", "--encoder_steps", "2"]) == 0
    assert "named object's cell right" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["beit3_tiny_grounded.pth"]
    assert main(["--out", str(out), "--what", "clip", "--grounding"]) == 2
    assert "fusion encoders only" in capsys.readouterr().err
