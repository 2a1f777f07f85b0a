"""``evf bench``: side-by-side speed and peak memory of the design choices that matter on CPU.

    evf bench            # BEiT-3-Base + SAM vit_b, random weights, minimal repetitions (< 10 min on 2 cores)
    evf bench --tiny     # tiny models: a smoke run in seconds
    evf bench --full     # one-per-prompt loops really run N times, 3 timed training steps

Sections: (a) training step without / with the frozen SAM-embedding cache (evf.cache), (b) N prompts
on one image, batched through ``EVFSAM.predict`` vs one ``predict`` call per prompt, (c) BEiT-3's
SDPA attention vs an explicit softmax(QK^T/sqrt(d))V reference (max |difference| and time ratio),
(d) peak resident memory of each configuration: every configuration runs in its own subprocess and
reports ``ru_maxrss`` (peak) and the rise over the RSS after its models were built.
Timings are wall-clock medians; no thresholds (this is a report, not a test).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

PROMPTS = ("the red square on the left", "the largest circle", "the blue triangle at the top", "the small green ring",
           "the yellow star near the right", "the second circle from the left", "the purple cross", "the big diamond")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from evf.commands.predict import OneLineParser

    p = OneLineParser(prog="evf bench", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny BEiT-3 and SAM (smoke run)")
    p.add_argument("--full", action="store_true", help="run every one-per-prompt loop for real; 3 timed steps")
    p.add_argument("--encoder", help="BEiT-3 size (default base; tiny with --tiny)")
    p.add_argument("--sam", help="SAM-1 variant (default vit_b; tiny with --tiny)")
    p.add_argument("--prompts", default="1,4,8,16", help="prompt counts N for section (b)")
    p.add_argument("--batch-size", type=int, default=1, help="training batch for section (a)")
    p.add_argument("--steps", type=int, help="timed training steps per mode (default 1, 3 with --full/--tiny)")
    p.add_argument("--loop-calls", type=int, help="one-per-prompt calls really timed (default 2; N with --full)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per configuration")
    p.add_argument("--only", default="train,prompts,attention", help="sections to run (comma list)")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (memory is then the whole run's peak)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one configuration and print its JSON
    args = p.parse_args(list(argv))
    args.encoder = args.encoder or ("tiny" if args.tiny else "base")
    args.sam = args.sam or ("tiny" if args.tiny else "vit_b")
    args.steps = args.steps or (3 if args.full or args.tiny else 1)
    args.counts = [int(n) for n in args.prompts.split(",") if n.strip()]
    if not args.counts or min(args.counts) < 1:
        raise ValueError(f"--prompts needs positive counts, got {args.prompts!r}")
    args.loop_calls = args.loop_calls or (max(args.counts) if args.full or args.tiny else 2)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - {"train", "prompts", "attention"}
    if unknown:
        raise ValueError(f"--only: unknown section(s) {sorted(unknown)}; choose from train, prompts, attention")
    return args


# -- one configuration (runs in its own process) ------------------------------------------------
def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_model(encoder: str, sam: str):
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import Sam1Backend

    torch.manual_seed(0)  # identical weights in every process: the cache signature must match
    return EVFSAM(Beit3Encoder(size=encoder), Sam1Backend(variant=sam))


def raw_samples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mask = np.zeros((96, 128), bool)
        mask[10 + i % 20: 60, 20: 90 - i % 30] = True
        out.append({"image": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), "mask": mask,
                    "text": PROMPTS[i % len(PROMPTS)], "image_id": f"img{i}"})
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def case_train(c: dict) -> dict:
    """Preprocess a batch (pixels, or a cache lookup) + forward + loss + backward + AdamW step."""
    model = build_model(c["encoder"], c["sam"]).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    samples = raw_samples(c["batch_size"] * (c["steps"] + 1))
    pre = model.preprocessor()
    if c.get("cache"):
        from evf.cache import EmbeddingCache

        pre = EmbeddingCache(c["cache"]).check(model.sam).preprocessor(pre)
    base = rss_mib()

    def step(chunk):
        batch = pre.collate([pre.sample(**s) for s in chunk])
        loss = model.loss(model(batch), batch["masks"])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    chunks = [samples[i: i + c["batch_size"]] for i in range(0, len(samples), c["batch_size"])]
    step(chunks[0])  # warm-up (allocator, first-call overheads)
    times = [timed(lambda ch=ch: step(ch)) for ch in chunks[1:]]
    return {"seconds": statistics.median(times), "base_mib": base}


def case_cache_build(c: dict) -> dict:
    from evf.cache import build_cache

    model = build_model(c["encoder"], c["sam"])
    samples = raw_samples(c["batch_size"] * (c["steps"] + 1))
    seconds = timed(lambda: build_cache(model.sam, {"train": samples}, c["cache"], batch_size=1, progress=False))
    return {"seconds": seconds, "images": len(samples), "base_mib": rss_mib()}


def case_predict(c: dict) -> dict:
    """``batched``: one ``predict`` with N prompts; ``loop``: ``calls`` separate one-prompt ``predict`` calls."""
    model = build_model(c["encoder"], c["sam"]).eval()
    image = raw_samples(1)[0]["image"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(c["n"])]
    model.predict(image, prompts[:1]) if c["warmup"] else None
    base = rss_mib()
    if c["mode"] == "batched":
        return {"seconds": timed(lambda: model.predict(image, prompts)), "base_mib": base}
    calls = [timed(lambda p=p: model.predict(image, [p])) for p in prompts[: c["calls"]]]
    return {"calls": calls, "base_mib": base}


def explicit_attention(module, x: torch.Tensor, split: int, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """The reference for section (c): ``MultiwaySelfAttention.forward`` with softmax(QK^T/sqrt(d))V written out."""
    q, k = module.query_key(x, split)
    v = module.split_heads(module.v_proj(x, split))
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape)
    return module.out_proj(module.inner_attn_ln(out, split), split)


def case_attention(c: dict) -> dict:
    from evf.encoders.beit3_model import Beit3Config, MultiwaySelfAttention, beit3_config

    cfg: Beit3Config = beit3_config(c["encoder"])
    torch.manual_seed(0)
    module = MultiwaySelfAttention(cfg).eval()
    n_img, n_txt, batch = cfg.num_image_tokens, 24, 8
    x = torch.randn(batch, n_img + n_txt, cfg.dim)
    padding = torch.zeros(batch, n_img + n_txt, dtype=torch.bool)
    padding[batch // 2:, n_img + n_txt // 2:] = True  # half the prompts are padded
    with torch.no_grad():
        diff = (module(x, n_img, padding) - explicit_attention(module, x, n_img, padding)).abs().max().item()
        fn = (lambda: module(x, n_img, padding)) if c["mode"] == "sdpa" else (lambda: explicit_attention(module, x, n_img, padding))
        fn()
        base = rss_mib()
        times = [timed(fn) for _ in range(c["repeats"])]
    return {"seconds": statistics.median(times), "max_abs_diff": diff, "base_mib": base,
            "shape": f"B={batch} N={n_img + n_txt} D={cfg.dim} H={cfg.heads}"}


CASES = {"train": case_train, "cache": case_cache_build, "predict": case_predict, "attention": case_attention}


def run_case(case: dict, in_process: bool, threads: int) -> dict:
    if in_process:
        result = CASES[case["kind"]](case)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, "-m", "evf.commands.bench", "--case", json.dumps(case)],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"benchmark configuration {case['kind']}/{case.get('mode', '')} failed: {tail}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def case_main(spec: str, threads: int) -> int:
    torch.set_num_threads(threads)
    result = CASES[json.loads(spec)["kind"]](json.loads(spec))
    result["peak_mib"] = rss_mib()
    print(json.dumps(result))
    return 0


# -- the report ---------------------------------------------------------------------------------
def row(cells: Sequence, widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def memory(r: dict) -> tuple[str, str]:
    peak = r.get("peak_mib", rss_mib())
    return f"{peak:.0f}", f"{peak - r['base_mib']:+.0f}"


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.case:
        return case_main(args.case, args.threads)
    torch.set_num_threads(args.threads)
    common = {"encoder": args.encoder, "sam": args.sam}
    start = time.perf_counter()
    mode = "one process" if args.in_process else "one subprocess per configuration"
    lines = [(f"evf bench: BEiT-3-{args.encoder} + SAM {args.sam}, random weights, CPU, "
              f"{args.threads} thread(s) per configuration, {mode}")]

    def run(case: dict) -> dict:
        result = run_case({**common, **case}, args.in_process, args.threads)
        if args.in_process:
            result["peak_mib"] = rss_mib()
        return result

    if "train" in args.sections:
        widths = (34, 10, 10, 14, 10)
        with tempfile.TemporaryDirectory(prefix="evf-bench-cache-") as folder:
            train = {"kind": "train", "batch_size": args.batch_size, "steps": args.steps}
            built = run({**train, "kind": "cache", "cache": folder})
            plain, cached = run(train), run({**train, "cache": folder})
        lines += ["", f"(a) training step, batch {args.batch_size}, median of {args.steps}",
                  row(("configuration", "s/step", "speed-up", "peak RSS MiB", "+MiB"), widths),
                  row(("without cache (SAM encoder runs)", f"{plain['seconds']:.3f}", "1.0x", *memory(plain)), widths),
                  row(("with cache (evf.cache)", f"{cached['seconds']:.3f}", f"{plain['seconds'] / cached['seconds']:.1f}x",
                       *memory(cached)), widths),
                  f"  building the cache once: {built['seconds']:.2f} s for {built['images']} images"]

    if "prompts" in args.sections:
        widths = (6, 12, 18, 9, 14, 14)
        loop = run({"kind": "predict", "mode": "loop", "n": max(args.counts), "calls": args.loop_calls, "warmup": args.tiny})
        calls = loop["calls"]
        lines += ["", "(b) N prompts on one image: one batched EVFSAM.predict vs one predict call per prompt",
                  row(("N", "batched s", "one-per-prompt s", "speed-up", "peak MiB batch", "peak MiB loop"), widths)]
        for n in args.counts:
            batched = run({"kind": "predict", "mode": "batched", "n": n, "warmup": args.tiny})
            measured = n <= len(calls)
            looped = sum(calls[:n]) if measured else n * statistics.mean(calls)
            lines.append(row((n, f"{batched['seconds']:.3f}", f"{looped:.3f}{'' if measured else '*'}",
                              f"{looped / batched['seconds']:.1f}x", memory(batched)[0], memory(loop)[0]), widths))
        if any(n > len(calls) for n in args.counts):
            lines.append(f"  * N x mean of {len(calls)} timed one-prompt calls (every call does the same work); "
                         "--full times all N")

    if "attention" in args.sections:
        widths = (36, 10, 9, 14, 14)
        sdpa = run({"kind": "attention", "mode": "sdpa", "repeats": 20})
        ref = run({"kind": "attention", "mode": "explicit", "repeats": 20})
        lines += ["", f"(c) BEiT-3 attention block ({sdpa['shape']}), median of 20",
                  row(("implementation", "ms", "ratio", "peak RSS MiB", "max |diff|"), widths),
                  row(("SDPA (the model)", f"{sdpa['seconds'] * 1e3:.2f}", "1.00x", memory(sdpa)[0], "-"), widths),
                  row(("explicit softmax(QK^T/sqrt(d))V", f"{ref['seconds'] * 1e3:.2f}",
                       f"{ref['seconds'] / sdpa['seconds']:.2f}x", memory(ref)[0], f"{ref['max_abs_diff']:.1e}"), widths)]

    lines += ["", f"total {time.perf_counter() - start:.0f} s"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
