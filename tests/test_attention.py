"""Attention maps (paper Fig.8): probabilities, shapes, text dependence, a model with known attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evf.attention import attention_maps, layer_attention, parse_query, patch_attention, save_heatmaps
from evf.encoders import Beit3Encoder
from evf.io import read_image

GRID = 4  # tiny BEiT-3: 32 px view, 8 px patches
N_IMG = GRID * GRID + 1


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return Beit3Encoder(size="tiny", mode="early").eval()


def inputs(encoder, rgb_image, prompts):
    images = encoder.image_view(rgb_image)[None].expand(len(prompts), -1, -1, -1)
    return images, encoder.tokenizer(prompts)


def test_probabilities_sum_to_one_over_all_keys_and_skip_padding(encoder, rgb_image):
    images, tok = inputs(encoder, rgb_image, ["the red circle on the left", "the square"])
    assert tok["padding_mask"][1].any(), "second prompt must be padded for this test"
    probs = layer_attention(encoder, images, tok["input_ids"], tok["padding_mask"])
    assert len(probs) == 2
    length = tok["input_ids"].shape[1]
    for p in probs:
        assert p.shape == (2, 2, N_IMG + length, N_IMG + length)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
        assert torch.all(p[1, :, :, N_IMG:][..., tok["padding_mask"][1]] == 0)


def test_patch_maps_shape_and_mass(encoder, rgb_image):
    images, tok = inputs(encoder, rgb_image, ["the blue square"])
    maps = patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"])
    assert maps.shape == (1, 2, GRID, GRID)
    # Summed over 2 heads; the CLS itself and the text keep some mass, so strictly below 2.
    assert torch.all(maps >= 0) and torch.all(maps.sum((-2, -1)) < 2.0) and torch.all(maps.sum((-2, -1)) > 0)
    text_maps = patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"], query="text:1", layers=[2])
    assert text_maps.shape == (1, 1, GRID, GRID)
    assert not torch.allclose(text_maps[0, 0], maps[0, 1])


def test_text_changes_fused_maps_but_not_image_only_maps(encoder, rgb_image):
    a = attention_maps(encoder, rgb_image, "the red circle on the left")
    b = attention_maps(encoder, rgb_image, "the blue square")
    assert a.shape == b.shape == (2, GRID, GRID) and a.dtype == np.float32
    assert np.abs(a - b).max() > 1e-4  # text keys share the softmax with the patches from layer 1 on
    image_only = attention_maps(encoder, rgb_image, None)
    late = Beit3Encoder(size="tiny", mode="late").eval()
    late.load_state_dict(encoder.state_dict())
    np.testing.assert_array_equal(attention_maps(late, rgb_image, "the red circle on the left"), image_only)
    np.testing.assert_array_equal(attention_maps(late, rgb_image, "the blue square"), image_only)


def test_masking_text_tokens_changes_fused_maps(encoder, rgb_image):
    images, tok = inputs(encoder, rgb_image, ["the red circle on the left"])
    full = patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"])
    masked = tok["padding_mask"].clone()
    masked[0, 3:] = True
    partial = patch_attention(encoder, images, tok["input_ids"], masked)
    assert (full - partial).abs().max() > 1e-4


def test_uniform_attention_by_construction(rgb_image):
    """Zero query projections give equal scores: each head spreads 1/N over the N unpadded keys."""
    torch.manual_seed(0)
    enc = Beit3Encoder(size="tiny", mode="early").eval()
    with torch.no_grad():
        for layer in enc.beit3.encoder.layers:
            for branch in (layer.self_attn.q_proj.A, layer.self_attn.q_proj.B):
                branch.weight.zero_()
                branch.bias.zero_()
    images, tok = inputs(enc, rgb_image, ["the red circle on the left", "the square"])
    maps = patch_attention(enc, images, tok["input_ids"], tok["padding_mask"], layers=[1, 2])
    heads = enc.cfg.heads
    for i in range(2):
        keys = N_IMG + int((~tok["padding_mask"][i]).sum())
        torch.testing.assert_close(maps[i], torch.full((2, GRID, GRID), heads / keys))
    text_maps = patch_attention(enc, images, tok["input_ids"], tok["padding_mask"], query="text:2", layers=[1])
    torch.testing.assert_close(text_maps[0, 0], maps[0, 0])


def test_layer_selection_and_bad_queries(encoder, rgb_image):
    images, tok = inputs(encoder, rgb_image, ["the square"])
    both = patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"])
    second = patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"], layers=[2])
    torch.testing.assert_close(second[:, 0], both[:, 1])
    with pytest.raises(ValueError, match="within 1..2"):
        patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"], layers=[3])
    with pytest.raises(ValueError, match="out of range"):
        patch_attention(encoder, images, tok["input_ids"], tok["padding_mask"], query="text:40")
    for bad in ("cls", "text:", "text:x"):
        with pytest.raises(ValueError, match="query must be"):
            parse_query(bad)
    with pytest.raises(ValueError, match="text-only"):
        attention_maps(Beit3Encoder(size="tiny", mode="text"), rgb_image, "the square")


def test_depth_limited_encoder_reports_only_its_layers(rgb_image):
    torch.manual_seed(0)
    enc = Beit3Encoder(size="tiny", mode="early", depth=1).eval()
    assert attention_maps(enc, rgb_image, "the square").shape == (1, GRID, GRID)


def test_save_heatmaps_writes_overlays(encoder, rgb_image, tmp_path):
    maps = attention_maps(encoder, rgb_image, "the square")
    paths = save_heatmaps(rgb_image, maps, tmp_path / "out")
    assert [p.name for p in paths] == ["layer01.png", "layer02.png"]
    overlay = read_image(paths[0])
    assert overlay.shape == rgb_image.shape and not np.array_equal(overlay, rgb_image)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "attention.npy"), maps)
    assert not list((tmp_path / "out").glob(".*tmp"))


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_release_folder_matches_api(tmp_path, capsys):
    from evf.cli import main
    from evf.model import EVFSAM
    from tests.tiny_artifacts import write_image, write_release_folder

    release = write_release_folder(tmp_path / "release")
    image_path = write_image(tmp_path / "img.png")
    out = tmp_path / "maps"
    argv = ["attention", "--checkpoint", str(release), "--image", str(image_path), "--prompt", "the red square",
            "--out", str(out), "--query", "text:1", "--layers", "2"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention.npy", "layer02.png"]
    assert str(out / "layer02.png") in capsys.readouterr().out
    expected = attention_maps(EVFSAM.from_pretrained(release).eval(), read_image(image_path), "the red square", "text:1", [2])
    np.testing.assert_allclose(np.load(out / "attention.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra, message", [(["--query", "pixel"], "query must be"),
                                            (["--layers", "7"], "within 1..2")])
def test_cli_bad_input_is_one_line(tmp_path, capsys, extra, message):
    from evf.cli import main
    from tests.tiny_artifacts import write_image, write_release_folder

    release = write_release_folder(tmp_path / "release")
    argv = ["attention", "--checkpoint", str(release), "--image", str(write_image(tmp_path / "img.png")),
            "--prompt", "the square", "--out", str(tmp_path / "maps"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evf: error:") and message in err[0]
