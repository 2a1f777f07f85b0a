"""Video: N objects tracked jointly (one ``predict_video`` with N prompts) vs one run per object (the official way).

    python -m benchmarks.video                          # BEiT-3-Base + SAM-2 Hiera-T, random weights, CPU
    python -m benchmarks.video --tiny                   # toy models (smoke run)
    python -m benchmarks.video --device cuda --encoder large --variant large --frames 32,128 --objects 1,4

Frames are generated on demand (moving shapes, never all in memory), so the peak memory of a configuration is
the model plus what tracking keeps; rows for several ``--frames`` counts show whether it grows with the video's
length. Each configuration runs in its own subprocess (its own peak RSS, and peak CUDA memory on a GPU). Both
columns do the same work per object and frame except the image encoder: joint tracking encodes each frame once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks import common
from evf.video_frames import Frames


class MovingShapes(Frames):
    """``count`` frames of ``size``, drawn when read (what a streamed video looks like to the tracker)."""

    def __init__(self, count: int, size: tuple[int, int]):
        super().__init__("moving shapes", count, size, keep=2)

    def read(self, index: int) -> np.ndarray:
        h, w = self.size
        frame = np.full((h, w, 3), 30, np.uint8)
        x, y = (index * 3) % (w // 2), (index * 2) % (h // 2)
        frame[h // 8 + y: h // 8 + y + h // 4, x: x + w // 4] = (220, 40, 40)
        frame[h // 2: h // 2 + h // 4, w - w // 4 - x: w - x] = (40, 40, 220)
        return frame


def case_track(c: dict) -> dict:
    """``joint``: one run with all N prompts; ``per-object``: N runs of one prompt each."""
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import Sam2Backend

    torch.manual_seed(0)
    device = torch.device(c["device"])
    model = EVFSAM(Beit3Encoder(size=c["encoder"]), Sam2Backend(variant=c["variant"])).to(device).eval()
    frames = MovingShapes(c["frames"], tuple(c["size"]))
    prompts = [common.PROMPTS[i % len(common.PROMPTS)] for i in range(c["n"])]
    list(model.predict_video(MovingShapes(2, tuple(c["size"])), prompts[:1]))  # warm-up (tokenizer, kernels)
    base = common.rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    runs = [prompts] if c["mode"] == "joint" else [[p] for p in prompts]
    start, cpu_start = time.perf_counter(), time.process_time()
    for run in runs:
        for _ in model.predict_video(frames, run, offload_state_to_cpu=c["offload"]):
            pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start, "base_mib": base}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


CASES = {"track": case_track}


def run_case(case: dict, args) -> dict:
    if args.in_process:
        return {**case_track(case), "peak_mib": common.rss_mib()}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video", "--case", json.dumps(case), "--threads", str(args.threads)],
                          capture_output=True, text=True, env=common.child_env(args.threads), check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"video benchmark {case['mode']} N={case['n']} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def counts(text: str, option: str, p) -> list[int]:
    try:
        values = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        p.error(f"{option} needs a comma list of positive counts, got {text!r}")
    return values


def main(argv=None) -> int:
    p = common.Parser(prog="python -m benchmarks.video", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny BEiT-3 and toy SAM-2 (smoke run)")
    p.add_argument("--encoder", help="BEiT-3 size (default base; tiny with --tiny)")
    p.add_argument("--variant", help="SAM-2 variant (default tiny = Hiera-T; toy with --tiny)")
    p.add_argument("--objects", default="1,2,4", help="object counts N (comma list)")
    p.add_argument("--frames", default="8,32", help="frame counts (comma list): peak memory per video length")
    p.add_argument("--size", default="240x320", help="frame size HxW")
    p.add_argument("--device", default="cpu")
    p.add_argument("--offload", action="store_true", help="offload SAM-2's per-frame memories to CPU")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per configuration")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (memory is then the whole run's peak)")
    p.add_argument("--case", help="internal: run one configuration and print its JSON")
    args = p.parse_args(argv)
    if args.case:
        return common.case_main(sys.modules[__name__], args.case, args.threads)
    objects, frame_counts = counts(args.objects, "--objects", p), counts(args.frames, "--frames", p)
    try:
        size = [int(s) for s in args.size.lower().split("x")]
        assert len(size) == 2 and min(size) >= 16
    except (ValueError, AssertionError):
        p.error(f"--size needs HxW, e.g. 240x320, got {args.size!r}")
    encoder, variant = args.encoder or ("tiny" if args.tiny else "base"), args.variant or ("toy" if args.tiny else "tiny")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    gpu = args.device.startswith("cuda")
    widths = (7, 3, 10, 10, 9, 10, 10, 9, 9) + ((10, 10) if gpu else ())
    header = ("frames", "N", "joint f/s", "1-by-1 f/s", "speed-up", "joint f/cs", "1by1 f/cs", "RSS joint", "RSS 1by1")
    lines = [(f"{p.prog}: BEiT-3-{encoder} + SAM-2 {variant}, random weights, {args.device}, {size[0]}x{size[1]} frames, "
              f"{args.threads} thread(s), {'one process' if args.in_process else 'one subprocess per configuration'}"),
             ("f/s: video frames per wall-clock second (1-by-1: frames / time of all N single-object runs); f/cs: per "
             "CPU second of the process (robust to other load on the machine); RSS: peak MiB"),
             common.row(header + (("CUDA joint", "CUDA 1by1") if gpu else ()), widths)]
    for t in frame_counts:
        for n in objects:
            case = {"kind": "track", "encoder": encoder, "variant": variant, "device": args.device, "size": size,
                    "frames": t, "n": n, "offload": args.offload}
            joint, single = run_case({**case, "mode": "joint"}, args), run_case({**case, "mode": "per-object"}, args)
            cells = [t, n, f"{t / joint['seconds']:.2f}", f"{t / single['seconds']:.2f}",
                     f"{single['seconds'] / joint['seconds']:.2f}x", f"{t / joint['cpu_seconds']:.2f}",
                     f"{t / single['cpu_seconds']:.2f}", f"{joint['peak_mib']:.0f}", f"{single['peak_mib']:.0f}"]
            if gpu:
                cells += [f"{joint['cuda_peak_mib']:.0f}", f"{single['cuda_peak_mib']:.0f}"]
            lines.append(common.row(cells, widths))
    lines += ["", f"total {time.perf_counter() - start:.0f} s"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
