"""``EVFSAM.set_image`` sessions: the SAM image encoder runs once per image, chunked decoding equals unchunked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evf.predictor import ImageSession, Prediction
from tests.tiny_artifacts import tiny_evfsam

# different lengths, so the padding of a chunk would differ if chunks were tokenized on their own
PROMPTS = ["the red square", "the largest circle on the left of the picture", "blue", "a ring",
           "the second shape from the top right corner", "x", "the green one"]


@pytest.fixture(scope="module")
def model():
    return tiny_evfsam()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def count_encoder_calls(model) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    model.sam.image_encoder.register_forward_hook(hook)
    return calls


def test_session_equals_one_shot_predict(model, image):
    session = model.set_image(image)
    assert isinstance(session, ImageSession)
    masks = session.predict(PROMPTS)
    assert masks.dtype == torch.bool and masks.device.type == "cpu" and masks.shape == (len(PROMPTS), 40, 56)
    assert 0 < masks.float().mean() < 1  # not a trivial mask
    torch.testing.assert_close(masks, model.predict(image, PROMPTS), rtol=0, atol=0)
    torch.testing.assert_close(session.predict(PROMPTS[2:4]), model.predict(image, PROMPTS[2:4]), rtol=0, atol=0)


def test_image_encoder_runs_once_per_session(image):
    model = tiny_evfsam()
    calls = count_encoder_calls(model)
    session = model.set_image(image)
    assert calls[0] == 1
    for prompt in PROMPTS:
        session.predict([prompt])
    session.predict(PROMPTS, max_batch=2)
    session.predict_with_scores(PROMPTS[:3])
    assert calls[0] == 1
    model.predict(image, PROMPTS[:2])
    model.predict(image, PROMPTS[:1])
    assert calls[0] == 3  # the one-shot form embeds on every call (the counter does count)


@pytest.mark.parametrize("max_batch", [1, 2, 3])
def test_chunked_equals_unchunked(model, image, max_batch):
    session = model.set_image(image)
    whole = session.predict_with_scores(PROMPTS, max_batch=None)
    chunked = session.predict_with_scores(PROMPTS, max_batch=max_batch)
    torch.testing.assert_close(chunked.masks, whole.masks, rtol=0, atol=0)
    # logits differ by float rounding at most: BLAS picks kernels by batch size (see docs/benchmarks.md)
    torch.testing.assert_close(chunked.low_res_logits, whole.low_res_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(session.predict(PROMPTS, max_batch=max_batch), whole.masks, rtol=0, atol=0)


def test_prediction_details(model, image):
    session = model.set_image(image)
    result = session.predict_with_scores(PROMPTS[:3])
    assert isinstance(result, Prediction)
    side = 4 * session.embedding.shape[-1]  # SAM-1's mask decoder upsamples the image embedding 4x
    assert result.low_res_logits.shape == (3, side, side) and result.scores.shape == (3,)
    # the masks are the post-processed low-res logits thresholded at 0
    full = model.sam.postprocess(result.low_res_logits, *_sizes(model, image))
    torch.testing.assert_close(result.masks, full > 0, rtol=0, atol=0)


def _sizes(model, image):
    sample = model.preprocessor().sample(image)
    return sample["input_sizes"].tolist(), sample["original_sizes"].tolist()


def test_bad_arguments(model, image):
    session = model.set_image(image)
    with pytest.raises(ValueError, match="at least one prompt"):
        session.predict([])
    with pytest.raises(ValueError, match="at least one prompt"):
        model.predict(image, [])
    with pytest.raises(ValueError, match="max_batch"):
        session.predict(PROMPTS, max_batch=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["sam1", "sam2", "efficientsam"])
def test_half_precision_weights(backend, dtype, image):
    """A model in fp16/bf16 (``from_pretrained(dtype=...)``, or ``.to(dtype)``) takes the fp32 image views: they are
    cast, the session runs under autocast (segment-anything's prompt encoder makes fp32 grids) and keeps the
    embedding in the weights' dtype. Its logits stay within half-precision noise of the fp32 model's."""
    model = tiny_evfsam(backend=backend)
    want = model.predict_with_scores(image, PROMPTS[:2])
    session = model.to(dtype).set_image(image)
    assert session.embedding.dtype == dtype and session.enc_image.dtype == dtype
    got = session.predict_with_scores(PROMPTS[:2])
    assert got.low_res_logits.dtype == torch.float32 and got.masks.shape == want.masks.shape
    assert (got.low_res_logits - want.low_res_logits).abs().max() < 0.05 * want.low_res_logits.abs().max()
    assert (got.masks == want.masks).float().mean() > 0.98
