"""Key/shape tables of the official checkpoints, written out from the spec independently of our modules
(shared by the tests that compare against them)."""
from __future__ import annotations


def official_beit3_shapes(dim: int, depth: int, ffn: int, vocab: int = 64010) -> dict[str, tuple[int, ...]]:
    """The key/shape table of spec §2, written out independently of our modules."""
    shapes = {
        "text_embed.weight": (vocab, dim),
        "vision_embed.proj.weight": (dim, 3, 16, 16),
        "vision_embed.proj.bias": (dim,),
        "vision_embed.cls_token": (1, 1, dim),
        "vision_embed.mask_token": (1, 1, dim),
        "encoder.embed_positions.A.weight": (199, dim),
        "encoder.embed_positions.B.weight": (1024, dim),
    }
    for br in "AB":
        shapes[f"encoder.layer_norm.{br}.weight"] = (dim,)
        shapes[f"encoder.layer_norm.{br}.bias"] = (dim,)
    for i in range(depth):
        p = f"encoder.layers.{i}."
        for br in "AB":
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes[f"{p}self_attn.{proj}.{br}.weight"] = (dim, dim)
                shapes[f"{p}self_attn.{proj}.{br}.bias"] = (dim,)
            for ln in ("self_attn.inner_attn_ln", "self_attn_layer_norm", "final_layer_norm"):
                shapes[f"{p}{ln}.{br}.weight"] = (dim,)
                shapes[f"{p}{ln}.{br}.bias"] = (dim,)
            shapes[f"{p}ffn.{br}.fc1.weight"] = (ffn, dim)
            shapes[f"{p}ffn.{br}.fc1.bias"] = (ffn,)
            shapes[f"{p}ffn.{br}.ffn_layernorm.weight"] = (ffn,)
            shapes[f"{p}ffn.{br}.ffn_layernorm.bias"] = (ffn,)
            shapes[f"{p}ffn.{br}.fc2.weight"] = (dim, ffn)
            shapes[f"{p}ffn.{br}.fc2.bias"] = (dim,)
    return shapes
