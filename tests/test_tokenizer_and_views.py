"""XLM-R tokenizer conventions (spec §6) and the three image views (spec §5)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from PIL import Image

from evf.sam import Sam1Backend
from evf.sam.sam1 import Sam1View
from evf.tokenizer import SEMANTIC_TOKEN, SPM_FILENAME, TOY_WORDS, XlmrTokenizer, toy_tokenizer_dir
from evf.transforms import IMAGENET_MEAN_255, IMAGENET_STD_255, StretchView, to_rgb_uint8


@pytest.fixture(scope="module")
def tok():
    return XlmrTokenizer(toy_tokenizer_dir(), max_length=12)


def test_vocabulary_is_the_trained_one_not_the_v5_fallback(tok):
    sp = spm.SentencePieceProcessor(model_file=str(toy_tokenizer_dir() / SPM_FILENAME))
    # fairseq layout: 4 specials + pieces (sp's unk/bos/eos mapped onto them) + <mask>, then [semantic]
    # from the toy folder's own added_tokens.json
    assert len(tok) == sp.get_piece_size() + 1 + 1 + 1
    assert len(tok) > 50
    ids = XlmrTokenizer(toy_tokenizer_dir(), max_length=512).encode(" ".join(TOY_WORDS))
    assert len(ids) > len(TOY_WORDS) and 3 not in ids  # no <unk> for known words


def test_fairseq_ids_and_semantic_token(tok):
    sp = spm.SentencePieceProcessor(model_file=str(toy_tokenizer_dir() / SPM_FILENAME))
    ids = tok.encode(f"{SEMANTIC_TOKEN} red circle")
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    assert ids[1] == tok.semantic_id == len(tok) - 1  # one id, never split (64002 with the real vocab)
    assert ids[2:-1] == [i + 1 for i in sp.encode("red circle")]  # piece id = sentencepiece id + 1
    assert tok.pad_id == 1


def test_right_padding_and_mask_from_pad_ids(tok):
    out = tok(["red", "the largest blue square"])
    ids, pad = out["input_ids"], out["padding_mask"]
    assert ids.shape[0] == 2 and torch.equal(pad, ids == 1)
    n = len(tok.encode("red"))
    assert not pad[0, :n].any() and pad[0, n:].all() and not pad[1].any()


def test_truncation_keeps_eos_and_warns(tok):
    with pytest.warns(UserWarning, match="truncated"):
        ids = tok.encode(" ".join(["red circle"] * 20))
    assert len(ids) == 12 and ids[-1] == 2


def test_model_file_under_another_name_is_read(tmp_path, tok):
    # transformers v5 trap: a bare vocab_file silently gives a 5-token vocab.
    path = tmp_path / "beit3.spm"
    shutil.copy(toy_tokenizer_dir() / SPM_FILENAME, path)
    other = XlmrTokenizer(path, max_length=12)
    assert len(other) == len(tok)
    assert other.encode("the red circle") == tok.encode("the red circle")
    assert other.semantic_id == tok.semantic_id  # a bare model file is staged with [semantic], as the toy folder


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=SPM_FILENAME):
        XlmrTokenizer(tmp_path)


def test_sam1_view_resizes_normalises_then_pads():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    x, (h, w) = Sam1View(64)(image)
    assert (h, w) == (int(30 * 64 / 50 + 0.5), 64) == (38, 64)
    assert x.shape == (3, 64, 64)
    assert torch.all(x[:, h:, :] == 0)  # zero padding after normalisation
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)).astype(np.float32)
    expected = (resized - np.array(IMAGENET_MEAN_255)) / np.array(IMAGENET_STD_255)
    np.testing.assert_allclose(x[:, :h, :w].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_stretch_view_is_bicubic_without_antialias():
    image = np.random.default_rng(1).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    x = StretchView(16)(image)
    t = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    ref = (F.interpolate(t, (16, 16), mode="bicubic", align_corners=False, antialias=False)[0] - 0.5) / 0.5
    torch.testing.assert_close(x, ref)
    assert not torch.allclose(x, (F.interpolate(t, (16, 16), mode="bicubic", antialias=True)[0] - 0.5) / 0.5)


@pytest.mark.parametrize("shape,dtype", [((9, 7), np.uint8), ((9, 7, 1), np.uint8), ((9, 7, 2), np.uint8),
                                         ((9, 7, 4), np.uint8), ((9, 7, 3), np.uint16)])
def test_odd_images_become_rgb_uint8(shape, dtype):
    out = to_rgb_uint8(np.full(shape, 200 if dtype == np.uint8 else 200 * 256, dtype=dtype))
    assert out.shape == (9, 7, 3) and out.dtype == np.uint8 and np.all(out == 200)


def test_zero_size_image_is_refused():
    with pytest.raises(ValueError, match="H, W > 0"):
        to_rgb_uint8(np.zeros((0, 5, 3), np.uint8))


def test_sam1_postprocess_crops_padding_then_resizes():
    sam = Sam1Backend(variant="tiny")  # 128-px view, 32x32 low-res masks
    low = torch.full((1, sam.image_size // 4, sam.image_size // 4), -5.0)
    h_low = low.shape[-2]
    low[..., : h_low // 2, :] = 5.0  # top half of the padded square is foreground
    out = sam.postprocess(low, input_size=(64, 128), original_size=(30, 60))
    assert out.shape == (1, 30, 60) and out.dtype == torch.float32
    # the valid (unpadded) region is the top half of the square, which is all foreground
    assert (out > 0).float().mean() > 0.95
    only_padding = -low  # foreground only in the padded bottom half: nothing survives the crop
    assert (sam.postprocess(only_padding, (64, 128), (30, 60)) > 0).float().mean() < 0.05
