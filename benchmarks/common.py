"""What the sectioned benchmarks (train_step_cache, prompt_batching, attention_sdpa, run) share: options, models,
timing, and section (d), memory: every configuration runs in its own subprocess (``python -m <section> --case``)
and reports ``ru_maxrss`` (its peak) and the rise over the RSS after its models were built.

A section module defines ``NAME``, ``CASES`` (kind -> function of one configuration dict, run in the measured
process), ``add_arguments(parser)``, ``check(args, parser)`` and ``report(args, run) -> lines``, and its ``main``
is ``common.main([this module], argv)``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("the red square on the left", "the largest circle", "the blue triangle at the top", "the small green ring",
           "the yellow star near the right", "the second circle from the left", "the purple cross", "the big diamond")


class Parser(argparse.ArgumentParser):
    """Bad options are reported as one line (``prog: error: ...``, exit 2), as ``evf`` commands do."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def child_env(threads: int) -> dict[str, str]:
    """Environment of a measured subprocess: its thread count, and this checkout importable from any folder."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path, "NO_ALBUMENTATIONS_UPDATE": "1"}


def module_name(section: ModuleType) -> str:
    """``benchmarks.x`` also when the section runs as ``__main__`` (``python -m benchmarks.x``)."""
    spec = getattr(section, "__spec__", None)
    return spec.name if spec is not None else section.__name__


# -- measured in the configuration's process --------------------------------------------------
def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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


# -- the report ---------------------------------------------------------------------------------
def row(cells: Sequence, widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def memory(r: dict) -> tuple[str, str]:
    """(peak RSS MiB, rise over the RSS after the models were built) of one configuration."""
    peak = r.get("peak_mib", rss_mib())
    return f"{peak:.0f}", f"{peak - r['base_mib']:+.0f}"


def run_case(section: ModuleType, case: dict, in_process: bool, threads: int) -> dict:
    """One configuration of ``section``: in this process, or in a fresh ``python -m <section> --case`` process."""
    if in_process:
        result = section.CASES[case["kind"]](case)
        result["peak_mib"] = rss_mib()  # the whole run's peak so far
        return result
    proc = subprocess.run([sys.executable, "-m", module_name(section), "--case", json.dumps(case), "--threads", str(threads)],
                          capture_output=True, text=True, env=child_env(threads), check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"benchmark configuration {case['kind']}/{case.get('mode', '')} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def case_main(section: ModuleType, spec: str, threads: int) -> int:
    torch.set_num_threads(threads)
    case = json.loads(spec)
    result = section.CASES[case["kind"]](case)
    result["peak_mib"] = rss_mib()
    print(json.dumps(result))
    return 0


def main(sections: Sequence[ModuleType], argv: Sequence[str] | None = None, prog: str | None = None,
         description: str = "") -> int:
    """Parse the common options and the sections' own, then print the sections' reports one after another."""
    p = Parser(prog=prog or f"python -m {module_name(sections[0])}", description=description)
    p.add_argument("--tiny", action="store_true", help="tiny BEiT-3 and SAM (smoke run)")
    p.add_argument("--full", action="store_true", help="run every one-per-prompt loop for real; 3 timed steps")
    p.add_argument("--encoder", help="BEiT-3 size (default base; tiny with --tiny)")
    p.add_argument("--sam", help="SAM-1 variant (default vit_b; tiny with --tiny)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per configuration")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (memory is then the whole run's peak)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one configuration and print its JSON
    if len(sections) > 1:
        names = ",".join(s.NAME for s in sections)
        p.add_argument("--only", default=names, help=f"sections to run (comma list of {names})")
    for section in sections:
        section.add_arguments(p)
    args = p.parse_args(None if argv is None else list(argv))
    if args.case:
        return case_main(sections[0], args.case, args.threads)
    args.encoder = args.encoder or ("tiny" if args.tiny else "base")
    args.sam = args.sam or ("tiny" if args.tiny else "vit_b")
    chosen = list(sections)
    if len(sections) > 1:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = set(wanted) - {s.NAME for s in sections}
        if unknown:
            p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(s.NAME for s in sections)}")
        chosen = [s for s in sections if s.NAME in wanted]
    for section in chosen:
        section.check(args, p)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mode = "one process" if args.in_process else "one subprocess per configuration"
    lines = [(f"{p.prog}: BEiT-3-{args.encoder} + SAM {args.sam}, random weights, CPU, {args.threads} thread(s) per "
              f"configuration, {mode}")]
    common = {"encoder": args.encoder, "sam": args.sam}
    for section in chosen:
        def run(case: dict, section: ModuleType = section) -> dict:
            return run_case(section, {**common, **case}, args.in_process, args.threads)

        lines += ["", *section.report(args, run)]
    lines += ["", f"total {time.perf_counter() - start:.0f} s"]
    print("\n".join(lines))
    return 0
