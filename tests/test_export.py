"""ONNX export (evf.export) and the torch-free runner (evf.deploy): parity with the PyTorch path.

Fast tests check the pieces the runner re-implements without torch (image views, tokenizer, post-processing
graph) against the torch code; the slow ones export whole tiny models of each SAM backend (and an official-format
release folder through ``evf export``) and compare onnxruntime with PyTorch end to end.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from evf.deploy_views import apply_view
from evf.export import view_spec
from evf.sam.efficientsam import LongestSideStretchView
from evf.sam.sam1 import Sam1View
from evf.sam.sam2 import SquareStretchView
from evf.transforms import StretchView

# (height, width): upscaling, downscaling, one side each way, already square
SHAPES = [(48, 64), (300, 170), (23, 1500), (128, 128)]
PROMPTS = ["the red square", "a circle", "the left one between the two big blue rings at the top", "[semantic] sky"]


def image_of(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_deploy_imports_no_torch(tmp_path):
    """Neither importing the runner nor reading a 16-bit image with it (the conversion the PyTorch path shares)
    loads torch; the pixels are those of ``evf.io.read_image``."""
    from PIL import Image

    from evf.io import read_image

    path = tmp_path / "deep.png"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).save(path)
    code = ("import sys, evf.deploy; image = evf.deploy.read_image(sys.argv[1]); image.tofile(sys.argv[2]); "
            "print(sorted(m for m in ('torch', 'evf.transforms', 'evf.model') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "pixels")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    expected = read_image(path)
    assert expected.shape == (48, 64, 3) and expected.max() > 200  # the high byte of 16-bit values, not clipped
    np.testing.assert_array_equal(np.fromfile(tmp_path / "pixels", dtype=np.uint8).reshape(expected.shape), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("view", [Sam1View(128), SquareStretchView(128, "tensor"), SquareStretchView(128, "pil")],
                         ids=["sam1", "stretch_tensor", "stretch_pil"])
def test_exact_views_are_bit_identical(view, shape):
    image = image_of(shape)
    expected, expected_size = view(image)
    got, size = apply_view(view_spec(view), image)
    assert size == tuple(expected_size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected.numpy())


def test_views_convert_gray_alpha_and_16_bit_arrays_as_the_torch_views_do():
    rgb = image_of((40, 56))
    arrays = {"gray": rgb[..., 0], "gray_alpha": rgb[..., :2], "rgba": np.dstack([rgb, rgb[..., :1]]),
              "16_bit": rgb.astype(np.uint16) * 257}
    for view in (Sam1View(128), SquareStretchView(128, "tensor")):
        for kind, array in arrays.items():
            np.testing.assert_array_equal(apply_view(view_spec(view), array)[0], view(array)[0].numpy(), err_msg=kind)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        apply_view(view_spec(Sam1View(128)), rgb.astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("view", [StretchView(32), LongestSideStretchView(128)], ids=["beit3_bicubic", "effisam_old"])
def test_float_resize_views_match_to_float32_rounding(view, shape):
    image = image_of(shape)
    out = view(image)
    expected = (out[0] if isinstance(out, tuple) else out).numpy()
    got = apply_view(view_spec(view), image)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)  # values span about [-2.2, 2.7]


def test_exported_tokenizer_gives_the_same_ids(tmp_path):
    from types import SimpleNamespace

    from evf.deploy import XlmrTokens
    from evf.export import tokenizer_spec
    from evf.tokenizer import XlmrTokenizer, toy_tokenizer_dir

    encoder = SimpleNamespace(tokenizer=XlmrTokenizer(toy_tokenizer_dir(), max_length=12))
    tokens = XlmrTokens(tmp_path, tokenizer_spec(encoder, tmp_path))
    texts = [*PROMPTS, "  Ünïcode 🙂 left  ", "the [semantic]thing"]  # the third prompt is cut to 12 tokens
    with pytest.warns(UserWarning, match="truncated"):
        expected = encoder.tokenizer(texts)
    with pytest.warns(UserWarning, match="truncated"):
        ids, padding = tokens(texts)
    assert ids.shape[1] == 12
    np.testing.assert_array_equal(ids, expected["input_ids"].numpy())
    np.testing.assert_array_equal(padding, expected["padding_mask"].numpy())


@pytest.mark.parametrize("kind", ["upsample_crop_resize", "resize"])
def test_postprocess_graph_matches_the_backends(tmp_path, kind):
    import onnxruntime as ort

    from evf.export_postprocess import build_postprocess
    from evf.sam.base import upsample_logits

    build_postprocess({"kind": kind, "size": 128}, tmp_path / "post.onnx")
    session = ort.InferenceSession(str(tmp_path / "post.onnx"), providers=["CPUExecutionProvider"])
    low = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 4
    for input_size, original in [((96, 128), (75, 100)), ((128, 40), (700, 219))]:
        if kind == "resize":
            expected = upsample_logits(low, original)
        else:  # SAM-1: to the padded square, crop the padding, to the image
            expected = upsample_logits(upsample_logits(low, (128, 128))[..., :input_size[0], :input_size[1]], original)
        logits, masks = session.run(None, {"low_res_logits": low.numpy(), "input_size": np.array(input_size),
                                           "original_size": np.array(original)})
        assert logits.shape == (3, *original)
        np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=1e-4)  # ORT and torch round the weights apart
        np.testing.assert_array_equal(masks, logits > 0)


def test_unsupported_models_are_refused_in_one_line():
    from types import SimpleNamespace

    from evf.export import ExportError, check_exportable
    from evf.sam import Sam1Backend

    with pytest.raises(ExportError, match="supports BEiT-3 encoders.*not object"):
        check_exportable(SimpleNamespace(encoder=object(), sam=Sam1Backend.__new__(Sam1Backend)))


# -- whole models (slow: 3-7 s each on 2 quiet cores, mostly tracing) ---------------------------------------
def assert_parity(model, folder, image, prompts=PROMPTS):
    """onnxruntime vs PyTorch: low-res and full-size logits within 1e-4, identical masks; 4 prompts in chunks of 3
    exercise prompt counts (1, 3) and lengths other than the export's."""
    from evf.deploy import OnnxModel

    expected = model.set_image(image).predict_with_scores(prompts, max_batch=3)
    sample = model.preprocessor().sample(image)
    full = model.sam.postprocess(expected.low_res_logits, sample["input_sizes"].tolist(), image.shape[:2])
    got = OnnxModel(folder).set_image(image).predict_with_scores(prompts, max_batch=3)
    np.testing.assert_allclose(got.low_res_logits, expected.low_res_logits.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.logits, full.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.scores, expected.scores.numpy(), rtol=0, atol=1e-4)
    # identical masks, except where the PyTorch logit lies within the logit tolerance of the threshold
    differ = got.masks != expected.masks.numpy()
    assert np.abs(full.numpy()[differ]).max(initial=0) <= 1e-4 and differ.mean() < 1e-3
    return got


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-beit3-sam1", "tiny-beit3-sam2", "tiny-beit3-efficientsam"])
def test_onnx_runner_matches_pytorch(tmp_path, preset):
    import evf
    from evf.deploy import OnnxModel
    from evf.export import export_onnx

    torch.manual_seed(0)
    model = evf.create_model(preset).eval()
    export_onnx(model, tmp_path, quantize="int8")
    got = assert_parity(model, tmp_path, image_of((75, 101)))
    int8 = OnnxModel(tmp_path, int8=True).predict(image_of((75, 101)), PROMPTS)
    assert int8.shape == got.masks.shape and int8.dtype == bool
    config = json.loads((tmp_path / "deploy.json").read_text())
    assert config["backend"] == model.sam.name and config["graphs"]["image_encoder_int8"] == "image_encoder.int8.onnx"


# in the default suite (~2 s): the official release layout, SAM-1, the CLI and the runner end to end
def test_evf_export_of_a_release_folder(tmp_path, release, capsys):
    from evf.cli import main
    from evf.model import EVFSAM

    assert main(["export", "--checkpoint", str(release), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert "evf export: sam1_tiny" in capsys.readouterr().out
    assert_parity(EVFSAM.from_pretrained(release).eval(), tmp_path / "onnx", image_of((90, 61), seed=3))
