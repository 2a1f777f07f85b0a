"""EfficientSAM backend == the official EfficientSAM / EVF-SAM code, number for number.

``tests/data/efficientsam_reference.pt`` was written by ``tools/parity/efficientsam_reference.py`` from the
official code (hustvl/EVF-SAM ``model/EfficientSAM``, ``inference.py``) on a tiny seeded configuration:
its state dict, fixed inputs and the official outputs. Here the weights go into our modules strictly.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evf.sam import EfficientSamBackend
from evf.sam.efficientsam_model import EfficientSam, EfficientSamConfig
from evf.transforms import IMAGENET_MEAN_255, IMAGENET_STD_255, normalize

FIXTURE = Path(__file__).parent / "data" / "efficientsam_reference.pt"
TOL = {"atol": 1e-5, "rtol": 0}


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def backend(reference) -> EfficientSamBackend:
    """The toy backend carrying the fixture's model (its widths differ from ``toy``), loaded strictly."""
    cfg = reference["config"]
    model = EfficientSam(EfficientSamConfig(**{**cfg, "upscaling_dims": tuple(cfg["upscaling_dims"])}))
    model.load_state_dict({k: v.float() for k, v in reference["state_dict"].items()}, strict=True)
    torch.manual_seed(0)
    sam = EfficientSamBackend(variant="toy")
    sam.model = model
    return sam.eval()


@torch.no_grad()
def test_mask_decoder_matches_the_official_for_every_token(backend, reference):
    case = reference["decoder"]["per_image"]  # one prompt token per image, two images
    model = backend.model
    masks, iou = model.mask_decoder(case["embeddings"], model.prompt_encoder.get_dense_pe(), case["tokens"])
    assert masks.shape == case["masks"].shape == (2, 4, 32, 32)
    torch.testing.assert_close(masks, case["masks"], **TOL)
    torch.testing.assert_close(iou, case["iou"], **TOL)


@torch.no_grad()
@pytest.mark.parametrize("case", ["per_image", "shared"])
def test_decode_returns_the_official_single_mask_output(backend, reference, case):
    """``decode`` = official ``multimask_output=False`` (token 0); ``shared``: one embedding, three 2-token prompts."""
    case = reference["decoder"][case]
    masks, iou = backend.decode(case["embeddings"], case["tokens"])
    torch.testing.assert_close(masks, case["masks"][:, :1], **TOL)
    torch.testing.assert_close(iou, case["iou"][:, :1], **TOL)


@torch.no_grad()
def test_image_encoder_matches_the_official(backend, reference):
    case = reference["encoder"]
    images = normalize(case["pixels"].float(), IMAGENET_MEAN_255, IMAGENET_STD_255)
    embeddings = backend.encode(images)
    assert embeddings.shape == case["embeddings"].shape == (1, 16, 8, 8)
    torch.testing.assert_close(embeddings, case["embeddings"], **TOL)


def efficientsam_s_view(**kwargs):
    with torch.device("meta"):  # the view needs only the 1024-px size, not the weights
        return EfficientSamBackend(variant="s", **kwargs).image_view


@pytest.mark.parametrize("view,record", [({}, "head"), ({"view": "longest_side_stretch"}, "pre_9d00853")])
def test_view_matches_the_official_sam_preprocess(reference, view, record):
    """Default: official HEAD ``sam_preprocess(model_type="effi")``; ``longest_side_stretch``: the code before 9d00853."""
    expected = reference["view"][record]
    x, _ = efficientsam_s_view(**view)(reference["view"]["image"].numpy())
    assert x.shape == (3, 1024, 1024) and x.dtype == torch.float32
    s = expected["stride"]
    torch.testing.assert_close(x[:, ::s, ::s], expected["sample"], **TOL)
    x = x.double()
    torch.testing.assert_close(x.sum(), expected["sum"], atol=1e-3, rtol=1e-9)
    torch.testing.assert_close((x * x).sum(), expected["sum_sq"], atol=1e-3, rtol=1e-9)


def test_default_view_stretches_the_uint8_image(reference):
    """Independent of the fixture: bilinear on the uint8 tensor (rounded to integers), then 0-255 mean/std."""
    image = reference["view"]["image"]
    stretched = F.interpolate(image.permute(2, 0, 1)[None], size=(1024, 1024), mode="bilinear", align_corners=False)[0]
    x, size = efficientsam_s_view()(image.numpy())
    assert torch.equal(x, normalize(stretched.float(), IMAGENET_MEAN_255, IMAGENET_STD_255)) and size == (1024, 1024)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_postprocess_resizes_straight_to_the_original_size_in_the_logits_dtype(backend, dtype):
    """As ``EvfEffiSamModel.postprocess_masks``: one bilinear resize, no crop, in the decoder's dtype; returned as fp32."""
    logits = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = backend.postprocess(logits, (1024, 1024), (45, 70))
    expected = F.interpolate(logits[None], size=(45, 70), mode="bilinear", align_corners=False)[0].float()
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_an_unknown_view_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^unknown EfficientSAM view 'pad'; choose from \['longest_side_stretch', 'stretch'\]$"):
        EfficientSamBackend(variant="toy", view="pad")
