"""One contract over every registered multimodal encoder x mode (x feature), on the tiny variants."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from evf.encoders import ENCODERS, Beit3Encoder
from tests.contracts import (
    TEXTS,
    TOL,
    build,
    cases,
    check_encoder_gradients,
    check_inputs_reach_the_feature,
    images,
    run,
    tokens,
)


def test_builtin_encoders_are_registered():
    assert {"beit3", "clip", "vilt"} <= set(ENCODERS)


@pytest.mark.parametrize("name,mode,feature", cases())
def test_output_width_and_preprocessing_are_picklable(name, mode, feature):
    enc = build(name, mode, feature).eval()
    view, tok = pickle.loads(pickle.dumps(enc.image_view)), pickle.loads(pickle.dumps(enc.tokenizer))
    ids, pad = tok(TEXTS)["input_ids"], tok(TEXTS)["padding_mask"]
    assert ids.dtype == torch.long and pad.dtype == torch.bool and ids.shape == pad.shape
    assert pad.any() and not pad[:, 0].any()  # right-padded
    imgs = torch.stack([view(np.zeros((30, 40, 3), np.uint8))] * len(TEXTS))
    out = run(enc, imgs, ids, pad)
    assert out.shape == (len(TEXTS), enc.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,mode,feature", cases())
def test_gradients_reach_the_inputs_and_only_used_parameters(name, mode, feature):
    check_encoder_gradients(name, mode, feature)


def test_the_input_check_fails_when_the_image_never_reaches_the_feature():
    """The contract's power without a per-plugin table: an early-fusion encoder that drops the image fails it."""
    class ImageBlind(Beit3Encoder):
        def forward(self, images, input_ids, padding_mask):
            return super().forward(torch.zeros_like(images), input_ids, padding_mask)

    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="image reaches the feature: False, uses_image: True"):
        check_inputs_reach_the_feature(ImageBlind(size="tiny", mode="early").train(), "early")


@pytest.mark.parametrize("name,mode,feature", cases())
def test_used_parameters_are_exactly_those_a_gradient_reaches(name, mode, feature):
    """With every parameter unfrozen, the feature's gradient reaches exactly ``used_parameters()``;
    ``requires_grad_(True)`` (what ``EVFSAM(train_encoder=True)`` calls) unfreezes only those."""
    enc = build(name, mode, feature).train()
    torch.nn.Module.requires_grad_(enc, True)
    ids, pad = tokens(enc, TEXTS)
    enc(images(enc, len(TEXTS)), ids, pad).sum().backward()
    reached = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert reached == set(enc.used_parameters()), f"counted but unreached: {sorted(set(enc.used_parameters()) - reached)[:3]}"
    enc.requires_grad_(False)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.requires_grad_(True)
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == reached


def test_depth_below_the_layer_count_freezes_the_layers_never_run():
    torch.manual_seed(0)
    enc = ENCODERS.create("beit3", tiny=True, mode="early", depth=1).train()
    ids, pad = tokens(enc, TEXTS)
    enc(images(enc, len(TEXTS)), ids, pad).sum().backward()
    named = dict(enc.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n, p in named.items() if p.grad is not None}
    assert any(".layers.1." in n for n in named) and not any(".layers.1." in n for n in trainable)


@pytest.mark.parametrize("name,mode,feature", cases())
def test_batch_independence_padding_invariance_and_determinism(name, mode, feature):
    enc = build(name, mode, feature).eval()
    imgs = images(enc, len(TEXTS))
    ids, pad = tokens(enc, TEXTS)
    batch = run(enc, imgs, ids, pad)
    for i, text in enumerate(TEXTS):  # alone = its own (shorter) padding, other samples absent
        alone_ids, alone_pad = tokens(enc, [text])
        torch.testing.assert_close(run(enc, imgs[i:i + 1], alone_ids, alone_pad)[0], batch[i], rtol=0, atol=TOL)

    garbage = torch.randint_like(ids, 1, 100)  # content under padding must not matter
    torch.testing.assert_close(run(enc, imgs, torch.where(pad, garbage, ids), pad), batch, rtol=0, atol=TOL)

    extra = 5
    longer_ids = torch.cat([ids, torch.full((len(ids), extra), enc.tokenizer.pad_id)], dim=1)
    longer_pad = torch.cat([pad, torch.ones(len(ids), extra, dtype=torch.bool)], dim=1)
    try:
        longer = run(enc, imgs, longer_ids, longer_pad)
    except ValueError:  # fixed-context text tower (CLIP): its tokenizer must then always emit that length
        assert tokens(enc, ["a"])[0].shape[1] == ids.shape[1]
    else:
        torch.testing.assert_close(longer, batch, rtol=0, atol=TOL)

    assert torch.equal(run(enc, imgs, ids, pad), batch)  # eval mode is deterministic


@pytest.mark.parametrize("name,mode,feature", cases())
def test_fusion_semantics(name, mode, feature):
    """early: feature depends on image and text; late: image and text halves are separate; text: no image."""
    enc = build(name, mode, feature).eval()
    imgs, other_imgs = images(enc, 2, seed=0), images(enc, 2, seed=1)
    ids, pad = tokens(enc, TEXTS[:2])
    other_ids, other_pad = tokens(enc, TEXTS[1:3][::-1])
    base = run(enc, imgs, ids, pad)
    by_image = (run(enc, other_imgs, ids, pad) - base).abs().amax(dim=0) > 1e-6
    by_text = (run(enc, imgs, other_ids, other_pad) - base).abs().amax(dim=0) > 1e-6
    assert by_text.any(), "the feature must depend on the text"
    if mode == "text":
        assert not by_image.any(), "text-only feature must not depend on the image"
    elif mode == "late":
        assert by_image.sum() == by_text.sum() == enc.out_dim // 2, "late: each modality owns one half"
        assert not (by_image & by_text).any(), "late: no column may depend on both modalities"
    else:
        assert mode == "early"
        assert by_image.any(), "early: the feature must depend on the image"
        assert (by_image & by_text).any(), "early: some feature column must mix both modalities"



@pytest.mark.parametrize("name,mode", [(n, m) for n in sorted(ENCODERS) for m in ENCODERS.get(n).cls.MODES])
def test_joint_pass_hooks(name, mode):
    """Fusion encoders expose their joint pass to pre-training code (whatever the mode): text token outputs that
    depend on the image, a pooled feature, the widths and a [MASK] id outside what the tokenizer emits; the
    others refuse every hook."""
    enc = build(name, mode, None).eval()
    ids, pad = tokens(enc, TEXTS)
    if not enc.has_joint_pass:
        hooks = (lambda: enc.joint_tokens(images(enc, 3), ids, pad), lambda: enc.hidden_size,
                 lambda: enc.vocab_size, lambda: enc.mask_token_id)
        for hook in hooks:
            with pytest.raises(NotImplementedError, match="no joint image-text pass"):
                hook()
        return
    with torch.no_grad():
        text_out, pooled = enc.joint_tokens(images(enc, 3, seed=0), ids, pad)
        other_text_out, _ = enc.joint_tokens(images(enc, 3, seed=1), ids, pad)
    assert text_out.shape == (3, ids.shape[1], enc.hidden_size) and pooled.shape == (3, enc.hidden_size)
    assert torch.isfinite(text_out).all() and torch.isfinite(pooled).all()
    assert (other_text_out - text_out).abs().amax() > 1e-6, "the text tokens must attend to the image"
    assert len(enc.tokenizer) <= enc.vocab_size and 0 <= enc.mask_token_id < enc.vocab_size
    assert enc.mask_token_id != enc.tokenizer.pad_id and not (ids == enc.mask_token_id).any()


def test_half_written_plugins_fail_at_construction():
    """The plugin bases are abstract: a plugin missing a required method fails when built, naming the method."""
    from evf.encoders import MultimodalEncoder
    from evf.sam import SamBackend

    class NoForward(MultimodalEncoder):
        image_view = property(lambda self: None)
        tokenizer = property(lambda self: None)

    class NoDecode(SamBackend):
        image_view = property(lambda self: None)

        def trainable_modules(self):
            return {}

        def encode(self, images):
            return images

        def postprocess(self, logits, input_size, original_size):
            return logits

    with pytest.raises(TypeError, match="forward"):
        NoForward()
    with pytest.raises(TypeError, match="decode"):
        NoDecode()
    type("Complete", (NoForward,), {"forward": lambda self, *a: None})()  # all methods given: builds
