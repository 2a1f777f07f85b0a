"""Miniature pre-training: the starting points the paper takes for granted, for the tiny models.

EVF-SAM fine-tunes a SAM trained for promptable segmentation and a BEiT-3 trained by masked data
modelling on image-text pairs. Random-init tiny models have neither; this module gives them a cheap
stand-in on synthetic scenes (never the benchmark's expressions or target masks):

- SAM: class-agnostic promptable segmentation (a box or point of a random object -> its mask), every
  part trained, as SAM itself was.
- BEiT-3 and ViLT: masked language modelling on scene captions ("red circle top left and blue square
  middle right") with the image attending jointly, plus image-text matching on the pooled token
  (another scene's caption as the negative): the objectives of BEiT-3 / ViLT pre-training.
- CLIP: its own symmetric contrastive loss on the same image-caption pairs.

With ``grounding`` (``--grounding``), BEiT-3 and ViLT learn phrase grounding instead: say in
which cell of a 3x3 grid the object a caption names ("red circle") is, from the fused pooled token.

``location_probe`` then says whether the encoder learned to use the image at all: it compares masked
location words predicted with the caption's own image and with another scene's (studies/fusion/README.md).

    python -m studies.fusion.pretrain --out weights/mini      # sam1_tiny.pth, beit3_tiny.pth, clip_tiny.pth, vilt_tiny/

Modules: ``scenes`` (scenes, captions, batches), ``sam``, ``encoders`` (objectives and probes), ``cli``.
The objectives reach the fusion encoders only through the plugin hooks (``joint_tokens``, ``mask_token_id``,
``hidden_size``, ``vocab_size`` of ``evf.encoders.MultimodalEncoder``).
"""
from studies.fusion.pretrain.cli import OUTPUTS, main
from studies.fusion.pretrain.encoders import (
    ContrastiveObjective,
    GroundingObjective,
    VisionLanguageObjective,
    build_encoder,
    grounding_probe,
    location_probe,
    pretrain_encoder,
    save_encoder,
)
from studies.fusion.pretrain.sam import pretrain_sam, sam_prompt
from studies.fusion.pretrain.scenes import caption_batch, caption_scene, grounding_batch, mask_tokens, scene_caption

__all__ = ["OUTPUTS", "ContrastiveObjective", "GroundingObjective", "VisionLanguageObjective", "build_encoder",
           "caption_batch", "caption_scene", "grounding_batch", "grounding_probe", "location_probe", "main",
           "mask_tokens", "pretrain_encoder", "pretrain_sam", "sam_prompt", "save_encoder", "scene_caption"]
