"""The whole EVF-SAM model: official checkpoint schema, loading, batching and fusion semantics."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from evf.checkpoint import CheckpointError
from evf.encoders import Beit3Encoder
from evf.model import EVFSAM, bce_dice_loss
from evf.release import to_official
from evf.sam import Sam1Backend
from evf.tokenizer import SPM_FILENAME, toy_tokenizer_dir
from tests.official_shapes import official_beit3_shapes


def official_evf_sam_shapes() -> dict[str, tuple[int, ...]]:
    """Spec §1-§3: SAM-H keys are upstream segment-anything keys under ``visual_model.``."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry["vit_h"](checkpoint=None)
    shapes = {f"visual_model.{k}": tuple(v.shape) for k, v in sam.state_dict().items()}
    shapes.update({f"mm_extractor.beit3.{k}": v for k, v in official_beit3_shapes(1024, 24, 4096).items()})
    shapes.update({"text_hidden_fcs.0.0.weight": (1024, 1024), "text_hidden_fcs.0.0.bias": (1024,),
                   "text_hidden_fcs.0.2.weight": (256, 1024), "text_hidden_fcs.0.2.bias": (256,)})
    return shapes




def test_full_size_model_loads_official_schema_strictly_on_meta():
    with torch.device("meta"):
        model = EVFSAM(Beit3Encoder(size="large"), Sam1Backend(variant="vit_h"))
        official = {k: torch.empty(s) for k, s in official_evf_sam_shapes().items()}
    assert sum(p.numel() for p in model.parameters()) == 1_315_105_072
    assert sum(v.numel() for v in model.state_dict().values()) == 1_315_105_328
    assert sum(v.numel() for v in official.values()) == 1_315_105_328
    from evf.model import rename_official

    result = model.load_state_dict(rename_official(official), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def write_release(model: EVFSAM, folder, fmt: str = "safetensors", dtype=torch.float32):
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in to_official(model.state_dict()).items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    config = {"architectures": ["EvfSamModel"], "model_type": "evf", "hidden_size": model.encoder.out_dim,
              "out_dim": model.sam.prompt_dim, "mm_extractor_scale": "tiny", "sam_scale": "tiny", "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(toy_tokenizer_dir() / SPM_FILENAME, folder / SPM_FILENAME)
    return folder


def randomize(model: EVFSAM) -> EVFSAM:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("fmt,dtype,tol", [("safetensors", torch.float32, 0.0), ("bin", torch.float16, 1e-2)])
def test_from_pretrained_reproduces_the_saved_model(tiny_model, rgb_image, tmp_path, fmt, dtype, tol):
    model = randomize(tiny_model)
    folder = write_release(model, tmp_path / "release", fmt, dtype)
    loaded = EVFSAM.from_pretrained(folder).eval()
    assert loaded.encoder.tokenizer.semantic_id is None  # no added_tokens.json: a plain release splits it (T17)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == torch.float32, k  # fp16 files are cast on load (spec T14)
        torch.testing.assert_close(a.float(), b, atol=tol or 0, rtol=tol or 0)


def test_from_pretrained_errors_name_the_problem(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        EVFSAM.from_pretrained(tmp_path)
    folder = write_release(tiny_model, tmp_path / "r")
    state = to_official(tiny_model.state_dict())
    state.pop("text_hidden_fcs.0.2.bias")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing"):
        EVFSAM.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        EVFSAM.from_pretrained(folder)


def logits_for(model: EVFSAM, image: np.ndarray, prompts: list[str]) -> torch.Tensor:
    pre = model.preprocessor()
    batch = pre.collate([pre({"image": image, "text": p}) for p in prompts])
    with torch.no_grad():
        return torch.stack(model(batch))


def test_batch_independence_and_padding_invariance(tiny_model, rgb_image):
    model = randomize(tiny_model).eval()
    alone = logits_for(model, rgb_image, ["the red circle"])[0]
    batched = logits_for(model, rgb_image, ["the red circle", "the smallest blue square on the left of the ring"])
    torch.testing.assert_close(batched[0], alone, atol=1e-5, rtol=0)
    tok = model.encoder.tokenizer(["the red circle", "the smallest blue square on the left of the ring"])
    assert tok["padding_mask"][0].any()  # the short prompt really was padded
    assert not torch.allclose(batched[0], batched[1])


def test_predict_matches_forward_and_embeds_the_image_once(tiny_model, rgb_image, monkeypatch):
    model = randomize(tiny_model).eval()
    prompts = ["the red circle", "the blue square", "the top triangle"]
    calls = []
    original = model.sam.embed_images
    monkeypatch.setattr(model.sam, "embed_images", lambda x: calls.append(x.shape[0]) or original(x))
    masks = model.predict(rgb_image, prompts)
    assert calls == [1]
    assert masks.shape == (3, *rgb_image.shape[:2]) and masks.dtype == torch.bool
    assert torch.equal(masks, logits_for(model, rgb_image, prompts) > 0)


def encoder_feature(encoder, image_seed: int, text: str) -> torch.Tensor:
    image = np.random.default_rng(image_seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    tok = encoder.tokenizer([text])
    with torch.no_grad():
        return encoder(encoder.image_view(image)[None], tok["input_ids"], tok["padding_mask"])


@pytest.mark.parametrize("mode,image_matters,text_matters", [("early", True, True), ("text", False, True)])
def test_fusion_is_real(mode, image_matters, text_matters):
    torch.manual_seed(0)
    enc = Beit3Encoder(size="tiny", mode=mode).eval()
    base = encoder_feature(enc, 0, "the red circle")
    assert (not torch.allclose(encoder_feature(enc, 1, "the red circle"), base)) == image_matters
    assert (not torch.allclose(encoder_feature(enc, 0, "the blue square"), base)) == text_matters


def test_loss_is_bce_plus_dice_with_weights():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    target = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    p = torch.sigmoid(logits)
    bce = -(torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[1, 0]) + torch.log(p[1, 1])) / 4
    dice = 1 - (2 * (p[0, 0] + p[1, 1]) + 1) / (p.sum() + 2 + 1)
    out = bce_dice_loss(logits, target, bce_weight=0.5, dice_weight=2.0)
    torch.testing.assert_close(out["bce"], bce)
    torch.testing.assert_close(out["dice"], dice)
    torch.testing.assert_close(out["loss"], 0.5 * bce + 2.0 * dice)


def test_frozen_parts_and_switches(tiny_model):
    model = EVFSAM(Beit3Encoder(size="tiny"), Sam1Backend(variant="tiny", train_prompt_encoder=False), train_encoder=False)
    model.train()
    assert not model.sam.image_encoder.training  # frozen encoder stays in eval mode during fit
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.sam.model.prompt_encoder.parameters())
    assert all(p.requires_grad != n.startswith("iou_prediction_head.")  # no text-prompted loss reads the IoU head
               for n, p in model.sam.model.mask_decoder.named_parameters())
    assert all(p.requires_grad for p in model.projector.parameters())
