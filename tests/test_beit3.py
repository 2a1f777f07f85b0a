"""BEiT-3: official key schema, parameter counts, multiway routing and the spec's layer arithmetic."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evf.encoders.beit3_model import Beit3Model, beit3_config
from tests.official_shapes import official_beit3_shapes


@pytest.mark.parametrize("size,dim,depth,ffn,params", [("large", 1024, 24, 4096, 672_702_464), ("base", 768, 12, 3072, 220_987_392)])
def test_state_dict_matches_official_schema(size, dim, depth, ffn, params):
    with torch.device("meta"):
        model = Beit3Model(beit3_config(size))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_beit3_shapes(dim, depth, ffn)
    assert len(ours) == 11 + 40 * depth  # 971 tensors for Large (spec §2)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Beit3Model(beit3_config("tiny")).eval()
    for p in model.parameters():  # LayerNorms start at 1/0: randomise so every weight matters
        p.data.normal_(0, 0.3)
    return model


def image_and_text(cfg, batch=2, length=5):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, cfg.img_size, cfg.img_size, generator=g)
    ids = torch.randint(4, 100, (batch, length), generator=g)
    return images, ids


def test_multiway_routing_image_uses_a_text_uses_b(tiny):
    images, ids = image_and_text(tiny.cfg)
    img_only, txt_only = tiny(images=images), tiny(input_ids=ids)
    with torch.no_grad():
        for name, p in tiny.named_parameters():
            if ".B." in name or name.endswith((".B.weight", ".B.bias")) or name.startswith("text_embed"):
                p.add_(1.0)
    assert torch.equal(tiny(images=images), img_only)  # image-only input never touches branch B
    assert not torch.allclose(tiny(input_ids=ids), txt_only)


def test_reserved_position_rows_are_never_read(tiny):
    images, ids = image_and_text(tiny.cfg)
    before = tiny(images, ids)
    with torch.no_grad():
        tiny.encoder.embed_positions.A.weight[:2] += 5.0
        tiny.encoder.embed_positions.B.weight[:2] += 5.0
    assert torch.equal(tiny(images, ids), before)


def reference_layer(layer, x: torch.Tensor, split: int, key_pad: torch.Tensor, heads: int) -> torch.Tensor:
    """Spec §2 'One layer', step by step, with an explicit fp32 softmax."""
    def mw(m, t):
        return torch.cat([m.A(t[:, :split]), m.B(t[:, split:])], dim=1)

    b, n, d = x.shape
    h = mw(layer.self_attn_layer_norm, x)
    q = mw(layer.self_attn.q_proj, h) * (d // heads) ** -0.5
    k, v = mw(layer.self_attn.k_proj, h), mw(layer.self_attn.v_proj, h)
    q, k, v = (t.view(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2)
    scores = scores.masked_fill(key_pad[:, None, None, :], -math.inf)
    attn = (torch.softmax(scores.float(), dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + mw(layer.self_attn.out_proj, mw(layer.self_attn.inner_attn_ln, attn))
    h = mw(layer.final_layer_norm, x)

    def ffn(m, t):
        return m.fc2(m.ffn_layernorm(F.gelu(m.fc1(t).float())))

    return x + torch.cat([ffn(layer.ffn.A, h[:, :split]), ffn(layer.ffn.B, h[:, split:])], dim=1)


def test_layers_follow_the_spec_arithmetic(tiny):
    images, ids = image_and_text(tiny.cfg)
    pad = torch.zeros_like(ids, dtype=torch.bool)
    pad[0, 3:] = True
    x, split, key_pad = tiny.embed(images, ids, pad)
    assert split == tiny.cfg.num_image_tokens
    assert torch.all(x[0, split + 3:] == 0)  # padded embeddings are zeroed, not only masked
    ref = x
    for layer in tiny.encoder.layers:
        ref = reference_layer(layer, ref, split, key_pad, tiny.cfg.heads)
    ref = torch.cat([tiny.encoder.layer_norm.A(ref[:, :split]), tiny.encoder.layer_norm.B(ref[:, split:])], dim=1)
    torch.testing.assert_close(tiny(images, ids, pad), ref, atol=1e-5, rtol=1e-5)


def test_depth_runs_only_the_first_layers(tiny):
    images, ids = image_and_text(tiny.cfg)
    one = tiny(images, ids, depth=1)
    with torch.no_grad():
        for p in tiny.encoder.layers[1].parameters():
            p.add_(1.0)
    assert torch.equal(tiny(images, ids, depth=1), one)
    assert not torch.allclose(tiny(images, ids), one)


def test_text_longer_than_positions_is_refused(tiny):
    ids = torch.ones(1, tiny.cfg.max_text_positions, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds"):
        tiny(input_ids=ids)
