"""Prompting one image many times without redoing its image work (in the style of SAM's ``SamPredictor``).

    session = model.set_image(image)          # SAM image embedding + the encoder's image view, once
    masks = session.predict(["the zebra"])     # bool [N, H, W]; call as often as you like
    result = session.predict_with_scores(prompts)   # + SAM's predicted IoU and the low-res logits

BEiT-3 fuses image and text inside every layer, so only its *input view* of the image can be kept;
the SAM image encoder (the expensive part) runs once per session.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from evf.presence import presence_scores, reject_absent
from evf.sam.base import half_autocast

if TYPE_CHECKING:
    from evf.model import EVFSAM

# Prompts decoded at once: bounds activation memory (BEiT-3 + one full-size fp32 logit map per prompt).
DEFAULT_MAX_BATCH = 16


@dataclass
class Prediction:
    """Everything one ``predict_with_scores`` call computes, on the CPU.

    masks: bool ``[N, H, W]`` at the image's original size (logit > 0).
    scores: fp32 ``[N]``, SAM's predicted IoU of each mask.
    low_res_logits: fp32 ``[N, h, w]``, the mask decoder's output before post-processing (h = w = 256 for SAM-1).
    presence: fp32 ``[N]``, the presence head's probability that the prompt refers to something (``None`` for a
        model without the head); masks scoring below ``model.presence_threshold`` are empty (docs/gres.md).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    low_res_logits: torch.Tensor
    presence: torch.Tensor | None = None


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of ``module``'s weights. Image views are fp32; a model loaded in fp16 or bf16
    (``from_pretrained(dtype=...)``) needs them cast to its dtype, as the official demo casts its inputs."""
    weight = next(p for p in module.parameters() if p.is_floating_point())
    return weight.device, weight.dtype


class ImageSession:
    """One image, embedded once, ready for any number of ``predict`` calls.

    Args:
        model: an ``EVFSAM`` (put it in ``eval()`` mode yourself, as for any inference).
        sample: the image's views from ``model.preprocessor().sample(image)`` (may be computed in another thread).
        tokenizer: the encoder's tokenizer; pass one to reuse it across sessions (loading it costs a few ms).
    """

    def __init__(self, model: EVFSAM, sample: dict[str, Any], tokenizer: Callable | None = None):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else model.encoder.tokenizer
        self.device, dtype = placement(model)
        # casting the inputs is not enough for half weights (fp32 intermediates inside the SAM packages): autocast,
        # as the official demo runs
        self.precision = half_autocast(self.device, dtype)
        self.input_size = tuple(int(s) for s in sample["input_sizes"])
        self.original_size = tuple(int(s) for s in sample["original_sizes"])
        self.enc_image = sample["enc_images"].to(self.device, dtype)  # [3, S, S]: BEiT-3 sees it again with every prompt
        with torch.no_grad(), self.precision:
            self.embedding = model.sam.embed_images(sample["sam_images"][None].to(self.device, dtype)).to(dtype)  # [1, ...]

    def predict(self, prompts: Sequence[str], max_batch: int | None = DEFAULT_MAX_BATCH) -> torch.Tensor:
        """Bool masks ``[N, H, W]`` on the CPU, one per prompt; ``max_batch=None`` decodes all prompts at once."""
        return self.predict_with_scores(prompts, max_batch).masks

    @torch.no_grad()
    def predict_with_scores(self, prompts: Sequence[str], max_batch: int | None = DEFAULT_MAX_BATCH) -> Prediction:
        """Masks, predicted IoU and low-res logits; prompts go through the model ``max_batch`` at a time."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("give at least one prompt")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be a positive number or None, got {max_batch}")
        # Tokenized together so every chunk is padded to the same length as an unchunked call: chunked == unchunked.
        tokens = self.tokenizer(prompts)
        step = max_batch or len(prompts)
        masks, scores, low_res, presence = [], [], [], []
        for start in range(0, len(prompts), step):
            ids = tokens["input_ids"][start: start + step].to(self.device)
            padding = tokens["padding_mask"][start: start + step].to(self.device)
            enc = self.enc_image[None].expand(len(ids), -1, -1, -1)
            with self.precision:
                prompt_tokens, present = self.model.prompt_tokens_and_presence(enc, ids, padding)
                logits, iou = self.model.sam.decode(self.embedding, prompt_tokens)
            full = (self.model.sam.postprocess(logits[:, 0], self.input_size, self.original_size) > 0).cpu()
            if present is not None:
                presence.append(presence_scores(present).cpu())
                full = reject_absent(full, presence[-1], self.model.presence_threshold)
            masks.append(full)
            scores.append(iou[:, 0].float().cpu())
            low_res.append(logits[:, 0].float().cpu())
        return Prediction(torch.cat(masks), torch.cat(scores), torch.cat(low_res), torch.cat(presence) if presence else None)
