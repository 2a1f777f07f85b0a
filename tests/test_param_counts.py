"""Full-size parameter counts on the meta device (no memory) against the paper's Params columns (Tab.4, Tab.5).

Each row gives our count and, where the paper counted differently, the documented difference
(docs/encoders.md, "Parameter counts"); the reconciled number must then be within 2 % of the paper.
"""
from __future__ import annotations

import pytest
import torch

from evf.encoders import Beit3Encoder, ClipEncoder, ViltEncoder
from evf.model import EVFSAM
from evf.sam import Sam1Backend

M = 1e6
TOLERANCE = 0.02


def vilt_mlm_head() -> int:
    """The masked-LM head stored in dandelin/vilt-b32-mlm (transform + untied 30522-word decoder); never run by EVF-SAM."""
    from transformers import ViltConfig
    from transformers.models.vilt.modeling_vilt import ViltMLMHead

    with torch.device("meta"):
        return sum(p.numel() for p in ViltMLMHead(ViltConfig()).parameters())


def clip_text_transformer(model: str) -> int:
    """Only the text tower's residual blocks (no token/position tables, final LayerNorm or projection)."""
    with torch.device("meta"):
        return sum(p.numel() for p in ClipEncoder(model, mode="text").clip.transformer.parameters())


def clip_image_tower(model: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in ClipEncoder(model, mode="late").clip.visual.parameters())


def encoder(cls, **kwargs):
    with torch.device("meta"):
        return cls(**kwargs)


def whole_model(enc) -> int:
    """Tab.5 "Params": the encoder's used parameters + projector + SAM ViT-H (prompt encoder, mask decoder, image encoder)."""
    with torch.device("meta"):
        model = EVFSAM(enc, Sam1Backend("vit_h"))
    return enc.parameter_count() + sum(p.numel() for p in model.projector.parameters()) + \
        sum(p.numel() for p in model.sam.parameters())


# (row, builds our count, our count in M (+-0.5 %), paper's count in M, what the paper added (our count + extra ~ paper))
ENCODER_ROWS = [
    ("CLIP-L OpenAI text", lambda: encoder(ClipEncoder, model="ViT-L-14-quickgelu", mode="text").parameter_count(), 123.65, 123, None),
    ("CLIP-L OpenAI late", lambda: encoder(ClipEncoder, model="ViT-L-14-quickgelu", mode="late").parameter_count(), 427.62, 428, None),
    ("CLIP-L laion2b text", lambda: encoder(ClipEncoder, model="ViT-L-14", mode="text").parameter_count(), 123.65, 123, None),
    ("CLIP-L laion2b late", lambda: encoder(ClipEncoder, model="ViT-L-14", mode="late").parameter_count(), 427.62, 428, None),
    # The paper's 302M is CLIP-H's text transformer blocks alone (its CLIP-L figure does include the embeddings).
    ("CLIP-H text", lambda: encoder(ClipEncoder, model="ViT-H-14", mode="text").parameter_count(), 354.03, 302,
     lambda ours: clip_text_transformer("ViT-H-14")),
    ("CLIP-H late", lambda: encoder(ClipEncoder, model="ViT-H-14", mode="late").parameter_count(), 986.11, 986, None),
    # The paper counts vilt-b32-mlm as stored, masked-LM head included.
    ("ViLT text", lambda: encoder(ViltEncoder, mode="text").parameter_count(), 109.12, 133, lambda ours: ours + vilt_mlm_head()),
    ("ViLT late", lambda: encoder(ViltEncoder, mode="late").parameter_count(), 111.60, 136, lambda ours: ours + vilt_mlm_head()),
    ("ViLT early", lambda: encoder(ViltEncoder, mode="early").parameter_count(), 111.60, 136, lambda ours: ours + vilt_mlm_head()),
    ("BEiT-3-L text", lambda: encoder(Beit3Encoder, size="large", mode="text").parameter_count(), 369.15, 370, None),
    ("BEiT-3-L late", lambda: encoder(Beit3Encoder, size="large", mode="late").parameter_count(), 672.70, 673, None),
    ("BEiT-3-L early", lambda: encoder(Beit3Encoder, size="large", mode="early").parameter_count(), 672.70, 673, None),
    # Tab.5: whole model.
    # The paper's CLIP-L row is text-only (same scores as Tab.4's text row) but counts CLIP's image tower too.
    ("CLIP-L + SAM-H", lambda: whole_model(encoder(ClipEncoder, model="ViT-L-14-quickgelu", mode="text")), 765.53, 1080,
     lambda ours: ours + clip_image_tower("ViT-L-14-quickgelu")),
    ("ViLT + SAM-H", lambda: whole_model(encoder(ViltEncoder, mode="early")), 753.47, 783, lambda ours: ours + vilt_mlm_head()),
    ("BEiT-3-B + SAM-H", lambda: whole_model(encoder(Beit3Encoder, size="base", mode="early")), 862.86, 863, None),
    ("BEiT-3-L + SAM-H", lambda: whole_model(encoder(Beit3Encoder, size="large", mode="early")), 1315.10, 1320, None),
]


@pytest.mark.parametrize("row,count,ours_m,paper_m,paper_extra", ENCODER_ROWS, ids=[r[0] for r in ENCODER_ROWS])
def test_parameter_count_matches_paper(row, count, ours_m, paper_m, paper_extra):
    ours = count()
    assert ours / M == pytest.approx(ours_m, rel=0.005), f"{row}: our count changed"
    as_paper_counts = paper_extra(ours) if paper_extra else ours
    assert as_paper_counts / M == pytest.approx(paper_m, rel=TOLERANCE), f"{row}: {as_paper_counts / M:.1f}M vs paper {paper_m}M"


def test_text_mode_counts_only_the_text_side():
    with torch.device("meta"):
        text, both = Beit3Encoder(size="large", mode="text"), Beit3Encoder(size="large", mode="early")
        half_depth = Beit3Encoder(size="large", mode="early", depth=12)
    assert text.parameter_count(used=False) == both.parameter_count(used=False)  # same weights held...
    assert text.parameter_count() < both.parameter_count()  # ...fewer of them run
    assert half_depth.parameter_count() < both.parameter_count()
    assert both.parameter_count(used=False) - both.parameter_count() == 1024  # only BEiT's mask token is never run
    for enc in (text, both, half_depth):  # trainable = what the mode runs (no gradient ever reaches the rest)
        assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == enc.parameter_count()
    assert text.parameter_count() == 369_152_000 and half_depth.parameter_count() == 370_146_304
