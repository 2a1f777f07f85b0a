"""(b) N prompts on one image: one batched ``EVFSAM.predict`` vs one ``predict`` call per prompt.

    OMP_NUM_THREADS=2 python -m benchmarks.prompt_batching                  # BEiT-3-Base + SAM vit_b, random weights
    OMP_NUM_THREADS=2 python -m benchmarks.prompt_batching --full --prompts 1,4,8,16
    python -m benchmarks.prompt_batching --encoder large --sam vit_h --prompts 1,8

By default the one-per-prompt column is N x the mean of ``--loop-calls`` really timed calls (marked ``*``: every
call does identical work, one SAM embedding + one prompt); ``--full`` times all N. Each configuration runs in
its own subprocess (peak RSS per configuration).
"""
from __future__ import annotations

import statistics
import sys

from benchmarks import common

NAME = "prompts"


def case_predict(c: dict) -> dict:
    """``batched``: one ``predict`` with N prompts; ``loop``: ``calls`` separate one-prompt ``predict`` calls."""
    model = common.build_model(c["encoder"], c["sam"]).eval()
    image = common.raw_samples(1)[0]["image"]
    prompts = [common.PROMPTS[i % len(common.PROMPTS)] for i in range(c["n"])]
    if c["warmup"]:
        model.predict(image, prompts[:1])
    base = common.rss_mib()
    if c["mode"] == "batched":
        return {"seconds": common.timed(lambda: model.predict(image, prompts)), "base_mib": base}
    calls = [common.timed(lambda p=p: model.predict(image, [p])) for p in prompts[: c["calls"]]]
    return {"calls": calls, "base_mib": base}


CASES = {"predict": case_predict}


def add_arguments(p) -> None:
    p.add_argument("--prompts", default="1,4,8,16", help="prompt counts N (comma list)")
    p.add_argument("--loop-calls", type=int, help="one-per-prompt calls really timed (default 2; N with --full/--tiny)")


def check(args, p) -> None:
    try:
        args.counts = [int(n) for n in args.prompts.split(",") if n.strip()]
    except ValueError:
        p.error(f"--prompts needs a comma list of counts, got {args.prompts!r}")
    if not args.counts or min(args.counts) < 1:
        p.error(f"--prompts needs positive counts, got {args.prompts!r}")
    args.loop_calls = args.loop_calls or (max(args.counts) if args.full or args.tiny else 2)


def report(args, run) -> list[str]:
    widths = (6, 12, 18, 9, 14, 14)
    loop = run({"kind": "predict", "mode": "loop", "n": max(args.counts), "calls": args.loop_calls, "warmup": args.tiny})
    calls = loop["calls"]
    lines = ["(b) N prompts on one image: one batched EVFSAM.predict vs one predict call per prompt",
             common.row(("N", "batched s", "one-per-prompt s", "speed-up", "peak MiB batch", "peak MiB loop"), widths)]
    for n in args.counts:
        batched = run({"kind": "predict", "mode": "batched", "n": n, "warmup": args.tiny})
        measured = n <= len(calls)
        looped = sum(calls[:n]) if measured else n * statistics.mean(calls)
        lines.append(common.row((n, f"{batched['seconds']:.3f}", f"{looped:.3f}{'' if measured else '*'}",
                                 f"{looped / batched['seconds']:.1f}x", common.memory(batched)[0], common.memory(loop)[0]),
                                widths))
    if any(n > len(calls) for n in args.counts):
        lines.append(f"  * N x mean of {len(calls)} timed one-prompt calls (every call does the same work); --full times all N")
    return lines


def main(argv=None) -> int:
    return common.main([sys.modules[__name__]], argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
