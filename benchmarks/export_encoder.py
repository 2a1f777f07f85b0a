"""The exported SAM image encoder alone: PyTorch fp32 vs onnxruntime fp32 vs int8 variants, side by side, on the CPU.

    python -m benchmarks.export_encoder --preset evf-sam-beit3l-samh --sam variant=vit_b --threads 2
    python -m benchmarks.export_encoder --preset evf-sam-beit3l-samh --variants fp32,int8 --images zebra.jpg

Only the SAM backend is built (random weights, seed 0; no BEiT-3), so a quantization or session choice can be
tried on the ~10x cheaper image encoder before the whole-model ``benchmarks.export`` run. Besides the time per
image it reports weight-independent error figures of each variant's embedding against PyTorch fp32 (relative L2
error, cosine) and the low-res mask IoU of the backend's own decoder fed each embedding with the same random
prompt tokens (random weights: see docs/export.md on what that measures).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.export import default_images, iou, parse_overrides

PROMPT_TOKENS = 8


def build_backend(preset: str, overrides: dict):
    import torch

    from evf.presets import get_preset
    from evf.sam import SAM_BACKENDS

    torch.manual_seed(0)
    p = get_preset(preset)
    return SAM_BACKENDS.create(p.sam, **{**p.sam_args, **overrides}).eval()


def error_figures(embedding, reference) -> dict:
    e, r = (np.asarray(x, dtype=np.float64).ravel() for x in (embedding, reference))
    return {"rel_l2": float(np.linalg.norm(e - r) / np.linalg.norm(r)),
            "cosine": float(e @ r / (np.linalg.norm(e) * np.linalg.norm(r))),
            "max_abs": float(np.abs(e - r).max())}


def quantize_keeping(source: Path, target: Path, pattern: str) -> None:
    """``--quantize int8``'s settings, with the weight products whose node names match ``pattern`` left fp32."""
    import re

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and re.search(pattern, n.name)]
    print(f"int8 keeping {len(keep)} products fp32: {pattern}")
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     per_channel=True, reduce_range=True, nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True})


def quantize_u8u8_where(source: Path, target: Path, pattern: str) -> None:
    """``--quantize int8``'s settings, except that the products whose node names match ``pattern`` get 8-bit
    unsigned per-column weights (``int8-u8u8``: no int16 saturation on AVX2, a ~2x slower kernel here)."""
    from evf.export import quantize_dynamic_int8

    print(f"int8 with u8u8 products matching {pattern}")
    quantize_dynamic_int8(source, target, per_channel=True, reduce_range=True, unsigned_weights=pattern)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_encoder", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="evf-sam-beit3l-samh", help="the preset whose SAM backend is built")
    p.add_argument("--sam", nargs="*", default=[], help="backend overrides KEY=VALUE, e.g. variant=vit_b")
    p.add_argument("--variants", default="fp32,int8", help="comma list of fp32 and evf.export.QUANTIZATIONS names; "
                   "NAME:nospin runs NAME with onnxruntime's thread spinning off")
    p.add_argument("--keep-fp32", nargs="*", default=[], help="regexes of node names: one extra int8 variant "
                   "(int8-keep<i>) per regex, with the matching products left fp32")
    p.add_argument("--u8u8", nargs="*", default=[], help="regexes of node names: one extra int8 variant "
                   "(int8-u8u8-<i>) per regex, with the matching products quantized as int8-u8u8")
    p.add_argument("--images", nargs="*", help="photos (default: real photos found on disk)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=1, help="timed runs per image and runtime (the best is kept)")
    p.add_argument("--out", default="/tmp/evf-encoder-bench")
    p.add_argument("--reuse", action="store_true", help="keep the graphs exported and quantized earlier into --out (same weights)")
    p.add_argument("--profile", action="store_true", help="write an onnxruntime profile per variant into --out")
    args = p.parse_args(argv)
    import torch

    from evf.deploy import read_image, session_options
    from evf.export import GRAPHS, ImageEncoderGraph, export_graph, quantize_image_encoder
    from evf.export_fold import fold_input_independent_tensors

    torch.set_num_threads(args.threads)
    sam = build_backend(args.preset, parse_overrides(args.sam))
    tag = args.preset + "".join(f"-{s}" for s in args.sam)
    folder = Path(args.out) / tag
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / GRAPHS["image_encoder"]
    start = time.perf_counter()
    size = sam.image_size
    if not (args.reuse and fp32.is_file()):
        export_graph(ImageEncoderGraph(sam), (torch.zeros(1, 3, size, size),), fp32, ["sam_image"], ["embedding"],
                     {"sam_image": {0: "batch"}, "embedding": {0: "batch"}})
        fold_input_independent_tensors(fp32, "sam_image", (1, 3, size, size))  # as `evf export` does
    print(f"export {time.perf_counter() - start:.0f} s", flush=True)
    graphs = {"fp32": fp32}
    for name in args.variants.split(","):
        name = name.removesuffix(":nospin")
        if name in graphs:
            continue
        start = time.perf_counter()
        graphs[name] = folder / f"image_encoder.{name}.onnx"
        if args.reuse and graphs[name].is_file():
            continue
        quantize_image_encoder(fp32, graphs[name], name)
        print(f"quantize {name} {time.perf_counter() - start:.0f} s", flush=True)
    for i, pattern in enumerate(args.keep_fp32):
        name = f"int8-keep{i}"
        graphs[name] = folder / f"image_encoder.{name}.onnx"
        quantize_keeping(fp32, graphs[name], pattern)
        args.variants += f",{name}"
    for i, pattern in enumerate(args.u8u8):
        name = f"int8-u8u8-{i}"
        graphs[name] = folder / f"image_encoder.{name}.onnx"
        quantize_u8u8_where(fp32, graphs[name], pattern)
        args.variants += f",{name}"

    images = args.images or default_images()
    views = [sam.image_view(read_image(path))[0][None] for path in images]
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(PROMPT_TOKENS, 1, 256, generator=gen)
    with torch.no_grad():
        def masks(embedding):
            logits, _ = sam.decode(torch.as_tensor(embedding), tokens)
            return (logits[:, 0] > 0).numpy()

        rows = {"torch fp32": {"s": [], "err": [], "iou": []}}
        reference = []
        for view in views:
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                embedding = sam.encode(view)
                best = min(best, time.perf_counter() - start)
            rows["torch fp32"]["s"].append(best)
            reference.append((embedding.numpy(), masks(embedding)))
        print(f"  torch fp32: {rows['torch fp32']['s']}", flush=True)
        import onnxruntime as ort

        for name in args.variants.split(","):
            graph = graphs[name.removesuffix(":nospin")]
            options = session_options(args.threads)
            if name.endswith(":nospin"):  # worker threads sleep instead of spinning between ops
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if args.profile:
                options.enable_profiling = True
                options.profile_file_prefix = str(folder / f"profile-{name}")
            session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            row = rows[f"onnx {name}"] = {"s": [], "err": [], "iou": []}
            for view, (ref, ref_masks) in zip(views, reference):
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    embedding = session.run(None, {"sam_image": view.numpy()})[0]
                    best = min(best, time.perf_counter() - start)
                row["s"].append(best)
                row["err"].append(error_figures(embedding, ref))
                row["iou"] += [iou(a, b) for a, b in zip(masks(embedding), ref_masks)]
            if args.profile:
                print(f"  profile: {session.end_profiling()}")
            print(f"  onnx {name}: {row['s']} {row['err']}", flush=True)
            del session

    torch_s = np.mean(rows["torch fp32"]["s"])
    print(f"\n{tag} (random weights), {args.threads} threads, {len(images)} images, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'runtime':<16} {'s/image':>8} {'vs torch':>8} {'rel L2':>8} {'cosine':>9} {'IoU mean':>8} {'min':>6}")
    for kind, r in rows.items():
        rel = np.mean([e["rel_l2"] for e in r["err"]]) if r["err"] else 0.0
        cos = np.mean([e["cosine"] for e in r["err"]]) if r["err"] else 1.0
        ious = r["iou"] or [1.0]
        print(f"{kind:<16} {np.mean(r['s']):>8.2f} {torch_s / np.mean(r['s']):>7.2f}x {rel:>8.4f} {cos:>9.6f} "
              f"{np.mean(ious):>8.4f} {min(ious):>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
