"""Export an ``EVFSAM`` to ONNX, split the way SAM deployments run it, for ``evf.deploy`` (onnxruntime, no torch).

Graphs written to the output folder (axes named ``prompts`` / ``length`` are dynamic):

- ``image_encoder.onnx``: SAM view ``[batch, 3, S, S]`` -> the backend's image embedding (once per image);
- ``prompt_encoder.onnx``: the encoder's image view ``[1, 3, s, s]`` + ``input_ids`` / ``padding_mask``
  ``[prompts, length]`` -> SAM prompt tokens ``[prompts, 1, D]`` (multimodal encoder + projector);
- ``mask_decoder.onnx``: one image embedding ``[1, ...]`` + prompt tokens -> low-res logits ``[prompts, h, w]``
  and SAM's predicted IoU ``[prompts]``;
- ``postprocess.onnx`` (built op by op, see ``evf.export_postprocess``): low-res logits + sizes -> logits and
  masks at the image's size;
- optionally ``image_encoder.int8.onnx``: the image encoder with its weight products dynamically quantized
  (int8 per-column 7-bit weights, uint8 activations; see ``quantize_dynamic_int8``).

``deploy.json`` records what the runner needs besides the graphs: the image views' constants (read from the
model's own view objects, so the runner cannot drift from them) and the tokenizer (``tokenizer.json``).
The TorchScript-based exporter (``dynamo=False``) is used: torch.export stops on the data-dependent batch
logic of the SAM decoders, while tracing keeps ``.shape``-derived sizes dynamic.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from evf.errors import UserError
from evf.export_postprocess import OPSET  # one opset for every graph of an export

FORMAT = "evf-onnx"
FORMAT_VERSION = 1
GRAPHS = {"image_encoder": "image_encoder.onnx", "prompt_encoder": "prompt_encoder.onnx",
          "mask_decoder": "mask_decoder.onnx", "postprocess": "postprocess.onnx"}
INT8_IMAGE_ENCODER = "image_encoder.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"


class ExportError(UserError, ValueError):
    """A model or option the ONNX export does not support; one line naming it."""


class ImageEncoderGraph(nn.Module):
    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam

    def forward(self, sam_image: torch.Tensor) -> torch.Tensor:
        return self.sam.encode(sam_image)


class PromptEncoderGraph(nn.Module):
    """The encoder's image view of ONE image, repeated over the prompt batch inside the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, enc_image: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        images = enc_image.expand(input_ids.shape[0], -1, -1, -1)
        return self.model.prompt_tokens(images, input_ids, padding_mask)


class MaskDecoderGraph(nn.Module):
    """ONE image embedding, any number of prompt tokens: the backend's own ``decode`` (single-mask output)."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam

    def forward(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, iou = self.sam.decode(embedding, prompt_tokens)
        return logits[:, 0], iou[:, 0]


def view_spec(view) -> dict:
    """A picklable image view -> the plain dict ``evf.deploy_views`` rebuilds it from (the same constants)."""
    from evf.sam.efficientsam import LongestSideStretchView
    from evf.sam.sam1 import Sam1View
    from evf.sam.sam2 import SquareStretchView
    from evf.transforms import IMAGENET_MEAN_255, IMAGENET_STD_255, StretchView

    imagenet = {"mean": list(IMAGENET_MEAN_255), "std": list(IMAGENET_STD_255)}
    if isinstance(view, StretchView):
        return {"kind": "stretch", "size": view.size, "mean": list(view.mean), "std": list(view.std), "mode": view.mode}
    if isinstance(view, Sam1View):
        return {"kind": "longest_side_pad", "size": view.size, **imagenet}
    if isinstance(view, SquareStretchView):
        return {"kind": "square_stretch", "size": view.size, "resize": view.resize, **imagenet}
    if isinstance(view, LongestSideStretchView):
        return {"kind": "longest_side_stretch", "size": view.size, **imagenet}
    raise ExportError(f"the ONNX export does not know the image view {type(view).__name__}")


def postprocess_spec(sam: nn.Module) -> dict:
    """How the backend brings low-res logits to the image: SAM-1 upsamples to its input square and crops the
    padding; SAM-2 and EfficientSAM stretched the whole image, so one resize to the original size."""
    from evf.sam import Sam1Backend

    if isinstance(sam, Sam1Backend):
        return {"kind": "upsample_crop_resize", "size": sam.image_size}
    return {"kind": "resize"}


def tokenizer_spec(encoder: nn.Module, out: Path) -> dict:
    from evf.tokenizer import XlmrTokenizer

    tok = encoder.tokenizer
    if not isinstance(tok, XlmrTokenizer) or not hasattr(tok.tok, "backend_tokenizer"):
        raise ExportError(f"the ONNX export supports BEiT-3's XLM-R tokenizer, not {type(tok).__name__} "
                          f"(encoder {type(encoder).__name__})")
    (out / TOKENIZER_FILE).write_text(tok.tok.backend_tokenizer.to_str())
    return {"file": TOKENIZER_FILE, "pad_id": tok.pad_id, "max_length": tok.max_length, "lowercase": tok.lowercase}


def check_exportable(model: nn.Module) -> None:
    from evf.encoders import Beit3Encoder
    from evf.sam import EfficientSamBackend, Sam1Backend, Sam2Backend

    if not isinstance(model.encoder, Beit3Encoder):
        raise ExportError(f"the ONNX export supports BEiT-3 encoders (EVF-SAM's), not {type(model.encoder).__name__}")
    if not isinstance(model.sam, (Sam1Backend, Sam2Backend, EfficientSamBackend)):
        raise ExportError(f"the ONNX export supports SAM-1, SAM-2 and EfficientSAM, not {type(model.sam).__name__}")


def export_graph(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    """One graph into ``path``; a model over 2 GiB (SAM ViT-H) keeps its weights in one side file ``<name>.data``."""
    import onnx

    module.eval()  # the exporter restores the wrapper's mode afterwards, recursively: a new module would be in train mode
    stage = path.parent / f".{path.stem}.export"  # the exporter spreads >2 GiB weights over one file per tensor
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on Python ints the SAM code reads from shapes; parity tests check
        torch.onnx.export(module, args, str(stage / path.name), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    for old in (path, path.with_name(path.name + ".data")):
        old.unlink(missing_ok=True)
    if len(list(stage.iterdir())) == 1:
        os.replace(stage / path.name, path)
    else:
        graph = onnx.load(str(stage / path.name))  # reads the side files too
        onnx.save(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
        os.chmod(path.with_name(path.name + ".data"), path.stat().st_mode)  # onnx creates it 0600; follow the umask
    shutil.rmtree(stage)


def quantize_dynamic_int8(source: Path, target: Path, per_channel: bool = False, reduce_range: bool = False,
                          unsigned_weights: bool | str = False) -> None:
    """onnxruntime's dynamic quantization: int8 weights, each activation quantized to uint8 per tensor at run time.

    Only products with a constant weight become integer ops (``MatMulConstBOnly``): attention's activation x
    activation products and the relative-position Einsums stay fp32, as do the convolutions (patch embedding, neck).
    ``reduce_range`` keeps the weights in 7 bits: on x86 CPUs without VNNI (AVX2 only, as here) the uint8 x int8
    kernel adds pairs of products in saturating int16 (``vpmaddubsw``), which full 8-bit weights overflow; that
    overflow, not the rounding, was most of the old int8 error (embedding relative L2 0.26 -> 0.022 on SAM ViT-B).
    ``per_channel`` gives every output column its own weight scale (trained weights differ per column).
    ``unsigned_weights``: uint8 weights (8 bits, per column, asymmetric) for every product (``True``) or for the
    products whose node names match a regex; uint8 x uint8 sums in 32 bits (no saturation, no 7-bit weights) but
    runs at about half the speed here. benchmarks.export_encoder's ``--keep-fp32`` and ``--u8u8`` try such choices
    per product (docs/export.md)."""
    import re
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def run(src, dst, weight_type, reduce, **kwargs):
        quantize_dynamic(str(src), str(dst), weight_type=weight_type, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=per_channel, reduce_range=reduce, use_external_data_format=False,
                         extra_options={"MatMulConstBOnly": True}, **kwargs)

    if unsigned_weights is True:
        return run(source, target, QuantType.QUInt8, False)
    if not unsigned_weights:
        return run(source, target, QuantType.QInt8, reduce_range)
    graph = onnx.load(str(source), load_external_data=False).graph
    chosen = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and re.search(unsigned_weights, n.name)]
    with tempfile.TemporaryDirectory(dir=Path(target).parent) as tmp:
        first = Path(tmp) / "unsigned.onnx"
        run(source, first, QuantType.QUInt8, False, nodes_to_quantize=chosen)
        run(first, target, QuantType.QInt8, reduce_range)  # finds only the products still in float


def quantize_blockwise(source: Path, target: Path, bits: int = 8, block_size: int = 32, accuracy_level: int = 4) -> None:
    """``MatMulNBits``: weights quantized in blocks of ``block_size`` along the input axis; accuracy level 4
    quantizes the activations to int8 per block as well at run time (one scale per row and block). Twice as
    accurate as ``quantize_dynamic_int8`` but slower than fp32 on AVX2 CPUs here: only benchmarks.export_encoder
    offers it (docs/export.md)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                                          bits=bits, op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


QKV = r"/attn/qkv/"  # the attention input products of SAM-1, SAM-2 (Hiera) and EfficientSAM image encoders

# --quantize int8 is "int8". The others are kept for benchmarks.export_encoder (docs/export.md compares them).
QUANTIZATIONS = {
    "int8": lambda s, t: quantize_dynamic_int8(s, t, per_channel=True, reduce_range=True),
    "int8-per-tensor": lambda s, t: quantize_dynamic_int8(s, t),  # before: full 8-bit weights, one scale per matrix
    "int8-per-tensor-7bit": lambda s, t: quantize_dynamic_int8(s, t, reduce_range=True),
    "int8-u8u8": lambda s, t: quantize_dynamic_int8(s, t, per_channel=True, unsigned_weights=True),
    "int8-qkv-u8u8": lambda s, t: quantize_dynamic_int8(s, t, per_channel=True, reduce_range=True, unsigned_weights=QKV),
    "int8-blockwise": lambda s, t: quantize_blockwise(s, t, bits=8, block_size=32),
}


def quantize_image_encoder(source: Path, target: Path, name: str = "int8") -> None:
    QUANTIZATIONS[name](Path(source), Path(target))


@torch.no_grad()
def export_onnx(model: nn.Module, out: str | os.PathLike, quantize: str | None = None) -> Path:
    """Write the graphs, ``tokenizer.json`` and ``deploy.json`` of ``model`` (an ``EVFSAM``) into folder ``out``.

    The model is put in eval mode, fp32, on the CPU (in place), as the graphs are."""
    from evf.export_fold import fold_input_independent_tensors
    from evf.export_postprocess import build_postprocess

    check_exportable(model)
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown --quantize {quantize!r}; choose int8")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    sam, encoder = model.sam, model.encoder
    size = sam.image_size
    sam_image = torch.zeros(1, 3, size, size)
    enc_image = encoder.image_view(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy())[None]
    tokens = encoder.tokenizer(["an example prompt", "two"])  # 2 prompts of different length: padding takes part

    export_graph(ImageEncoderGraph(sam), (sam_image,), out / GRAPHS["image_encoder"], ["sam_image"], ["embedding"],
                 {"sam_image": {0: "batch"}, "embedding": {0: "batch"}})
    fold_input_independent_tensors(out / GRAPHS["image_encoder"], "sam_image", tuple(sam_image.shape))
    args = (enc_image, tokens["input_ids"], tokens["padding_mask"])
    export_graph(PromptEncoderGraph(model), args, out / GRAPHS["prompt_encoder"],
                 ["enc_image", "input_ids", "padding_mask"], ["prompt_tokens"],
                 {"input_ids": {0: "prompts", 1: "length"}, "padding_mask": {0: "prompts", 1: "length"},
                  "prompt_tokens": {0: "prompts"}})
    embedding = sam.encode(sam_image)
    prompt_tokens = model.prompt_tokens(enc_image.expand(2, -1, -1, -1), tokens["input_ids"], tokens["padding_mask"])
    export_graph(MaskDecoderGraph(sam), (embedding, prompt_tokens), out / GRAPHS["mask_decoder"],
                 ["embedding", "prompt_tokens"], ["low_res_logits", "iou"],
                 {"prompt_tokens": {0: "prompts"}, "low_res_logits": {0: "prompts"}, "iou": {0: "prompts"}})
    post = postprocess_spec(sam)
    build_postprocess(post, out / GRAPHS["postprocess"])
    graphs = dict(GRAPHS)
    if quantize == "int8":
        quantize_image_encoder(out / GRAPHS["image_encoder"], out / INT8_IMAGE_ENCODER)
        graphs["image_encoder_int8"] = INT8_IMAGE_ENCODER
    else:
        (out / INT8_IMAGE_ENCODER).unlink(missing_ok=True)  # an earlier export's, for other weights
    from evf.predictor import DEFAULT_MAX_BATCH

    config = {
        "format": FORMAT, "version": FORMAT_VERSION, "backend": sam.name, "graphs": graphs,
        "encoder_view": view_spec(encoder.image_view), "sam_view": view_spec(sam.image_view), "postprocess": post,
        "tokenizer": tokenizer_spec(encoder, out), "max_batch": DEFAULT_MAX_BATCH, "opset": OPSET,
    }
    (out / "deploy.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
