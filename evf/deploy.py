"""Run an ``evf export --format onnx`` folder with onnxruntime alone: image + text prompts -> masks, no torch.

    from evf.deploy import OnnxModel, read_image
    model = OnnxModel("exported/")                     # int8=True: the quantized image encoder, if exported
    session = model.set_image(read_image("photo.jpg"))  # the SAM image encoder runs once here
    masks = session.predict(["the zebra on the left"])  # numpy bool [N, H, W]
    result = session.predict_with_scores(["the tree"])  # + SAM's predicted IoU, the low-res and full logits

Preprocessing is ``evf.deploy_views`` (numpy + PIL) with the constants the export copied from the model's own
views; tokenization is the exported ``tokenizer.json`` through the ``tokenizers`` library. This module imports
neither torch nor any ``evf`` module that does (tests/test_export.py checks it in a fresh interpreter).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evf.deploy_views import apply_view
from evf.errors import UserError
from evf.io import read_image  # noqa: F401 (public here: the PyTorch path's reader, torch-free, same pixels)
from evf.tokenizer import encode_prompt


class DeployError(UserError, ValueError):
    """An export folder that cannot be run (missing or foreign files); one line naming the file."""


@dataclass
class OnnxPrediction:
    """masks bool ``[N, H, W]``; scores float32 ``[N]`` (SAM's predicted IoU); low_res_logits ``[N, h, w]``;
    logits ``[N, H, W]`` (before the threshold)."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    logits: np.ndarray


class XlmrTokens:
    """The exported tokenizer: ids as the PyTorch path's ``XlmrTokenizer`` gives them, right-padded."""

    def __init__(self, folder: Path, spec: dict):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / spec["file"]))
        self.pad_id = int(spec["pad_id"])
        self.max_length = spec["max_length"]
        self.lowercase = bool(spec["lowercase"])

    def encode(self, text: str) -> list[int]:
        return encode_prompt(text, lambda t: self.tok.encode(t).ids, self.lowercase, self.max_length)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        seqs = [self.encode(t) for t in texts]
        ids = np.full((len(seqs), max(len(s) for s in seqs)), self.pad_id, dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
        return ids, ids == self.pad_id


def session_options(threads: int | None = None):
    """The onnxruntime session options every graph runs with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxModel:
    """Args:
        folder: what ``evf export --format onnx --out FOLDER`` wrote.
        int8: use ``image_encoder.int8.onnx`` (exported with ``--quantize int8``).
        threads: onnxruntime intra-op threads (default: its own choice, one per core).
    """

    def __init__(self, folder: str | os.PathLike, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        config_file = self.folder / "deploy.json"
        try:
            self.config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise DeployError(f"cannot read {config_file}: {type(exc).__name__}") from None
        if self.config.get("format") != "evf-onnx":
            raise DeployError(f"{config_file} is not an evf ONNX export (format {self.config.get('format')!r})")
        graphs = self.config["graphs"]
        if int8 and "image_encoder_int8" not in graphs:
            raise DeployError(f"{self.folder} has no int8 image encoder: export it with --quantize int8")
        options = session_options(threads)

        def session(key: str):
            path = self.folder / graphs[key]
            if not path.is_file():
                raise DeployError(f"missing graph {path}")
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        self.image_encoder = session("image_encoder_int8" if int8 else "image_encoder")
        self.prompt_encoder = session("prompt_encoder")
        self.mask_decoder = session("mask_decoder")
        self.postprocess = session("postprocess")
        self.tokenizer = XlmrTokens(self.folder, self.config["tokenizer"])

    def set_image(self, image: np.ndarray) -> OnnxSession:
        """Embed ``image`` (``uint8 [H, W, 3]``) once; the session answers any number of prompts."""
        return OnnxSession(self, image)

    def predict(self, image: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        return self.set_image(image).predict(prompts)


class OnnxSession:
    def __init__(self, model: OnnxModel, image: np.ndarray):
        self.model = model
        self.original_size = np.array(np.asarray(image).shape[:2], dtype=np.int64)
        sam_image, input_size = apply_view(model.config["sam_view"], image)
        self.input_size = np.array(input_size, dtype=np.int64)
        self.enc_image = apply_view(model.config["encoder_view"], image)[0][None]
        self.embedding = model.image_encoder.run(None, {"sam_image": sam_image[None]})[0]

    def predict(self, prompts: Sequence[str], max_batch: int | None = None) -> np.ndarray:
        return self.predict_with_scores(prompts, max_batch).masks

    def predict_with_scores(self, prompts: Sequence[str], max_batch: int | None = None) -> OnnxPrediction:
        """Prompts go through the graphs ``max_batch`` at a time (default: deploy.json's, as ``ImageSession``)."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("give at least one prompt")
        ids, padding = self.model.tokenizer(prompts)  # tokenized together: every chunk padded alike, as in torch
        step = max_batch or self.model.config.get("max_batch") or len(prompts)
        parts = []
        for start in range(0, len(prompts), step):
            tokens = self.model.prompt_encoder.run(None, {"enc_image": self.enc_image, "input_ids": ids[start: start + step],
                                                          "padding_mask": padding[start: start + step]})[0]
            low_res, iou = self.model.mask_decoder.run(None, {"embedding": self.embedding, "prompt_tokens": tokens})
            logits, masks = self.model.postprocess.run(None, {"low_res_logits": low_res, "input_size": self.input_size,
                                                              "original_size": self.original_size})
            parts.append((masks, iou, low_res, logits))
        return OnnxPrediction(*(np.concatenate(p) for p in zip(*parts)))
