"""``evf export``: write a model as ONNX graphs for deployment with onnxruntime (``evf.deploy``, no torch).

    evf export --checkpoint path/to/evf-sam --format onnx --out exported/ [--quantize int8]

The graphs follow how SAM is deployed: the SAM image encoder (once per image), the multimodal encoder +
projector and the mask decoder + post-processing (per prompt batch); docs/export.md says what is exportable.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from evf.commands.common import CHECKPOINT_HELP, CONFIG_HELP, load_model, prepare_out_dir
from evf.errors import OneLineParser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.add_argument("--out", required=True, help="output folder (graphs, deploy.json, tokenizer.json)")
    p.add_argument("--quantize", choices=("int8",), help="also write an int8 (dynamic quantization) image encoder")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    out = prepare_out_dir(args.out)
    model = load_model(args.checkpoint, args.config)
    from evf.export import export_onnx

    export_onnx(model, out, quantize=args.quantize)  # refuses an unsupported model first, in one line
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"evf export: {model.sam.name} + {type(model.encoder).__name__} -> {out} ({', '.join(files)})")
    print(f"run it: python -c \"from evf.deploy import OnnxModel, read_image; "
          f"print(OnnxModel('{out}').predict(read_image('photo.jpg'), ['the zebra']).shape)\"")
    return 0
