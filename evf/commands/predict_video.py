"""``evf predict-video``: segment and track text-prompted objects through a video (SAM-2 backends).

    evf predict-video --checkpoint evf-sam2/ --video clip.mp4 --prompt "the zebra" --prompt "the man" --out out/

``--video`` is a video file (read with PyAV: ``pip install 'evf[video]'``) or a folder of frame images (file-name
order). Each prompt is one object, prompted on ``--prompt-frame`` and tracked by SAM-2's memory; ``--reprompt-every K``
runs the prompts again on every K-th frame to correct drift (see docs/video.md). Writes per-frame masks, an overlay
video and summary.json into ``--out`` (``evf.video_outputs``), listed in the output manifest as ``evf predict`` does:
a call refuses to overwrite its input or files it did not write. Frames are read one at a time and SAM-2's per-frame
memories are dropped once no later frame reads them, so memory does not grow with the video's length.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path

from evf.commands.common import CHECKPOINT_HELP, CONFIG_HELP, command_line_prompt, load_model, parse_device, prepare_out_dir
from evf.errors import OneLineParser, UserError
from evf.output_set import ImageOutputs, OutputSet
from evf.video_outputs import MASK_FORMATS, object_folders, planned_files, write_masks, write_overlay_video, write_summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf predict-video", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--video", required=True, help="video file (mp4, mkv, ...) or folder of frame images")
    p.add_argument("--prompt", action="append", required=True, help="a text prompt (one tracked object); repeat for several")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompt-frame", type=int, default=0, help="frame the prompts are applied on (default 0)")
    p.add_argument("--reprompt-every", type=int, help="run the text prompts again on every K-th frame (drift correction)")
    p.add_argument("--max-cond-frames", type=int, default=4, help="with --reprompt-every: prompted frames each frame attends to")
    p.add_argument("--mask-format", choices=MASK_FORMATS, default="per-object",
                   help="per-object: a 0/255 PNG per object per frame; indexed: one palette PNG per frame")
    p.add_argument("--no-overlay-video", action="store_true", help="skip overlay.mp4")
    p.add_argument("--fps", type=float, help="overlay video frame rate (default: the input video's, 25 for a frame folder)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--offload-state", action="store_true", help="keep SAM-2's per-frame memories in CPU memory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(list(argv))


def check_out(video: Path, out: Path) -> None:
    """Outputs never go into the frame folder they are computed from."""
    if video.is_dir() and Path(os.path.realpath(out)).is_relative_to(os.path.realpath(video)):
        raise UserError(f"--out {out} is inside the frame folder {video}; choose another --out")


def peak_memory_mib(device) -> dict[str, float]:
    import torch

    peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        peak["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    from evf.video import predict_video
    from evf.video_frames import open_frames

    prompts = [command_line_prompt(text, f"--prompt #{i + 1}") for i, text in enumerate(args.prompt)]
    if args.fps is not None and args.fps <= 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    if args.reprompt_every is not None and args.reprompt_every < 1:
        raise UserError(f"--reprompt-every must be at least 1, got {args.reprompt_every}")
    if args.max_cond_frames < 2:
        raise UserError(f"--max-cond-frames must be at least 2, got {args.max_cond_frames}")
    video = Path(args.video)
    check_out(video, Path(args.out))
    frames = open_frames(video)
    count = len(frames)
    if not 0 <= args.prompt_frame < count:
        raise UserError(f"--prompt-frame {args.prompt_frame} is outside the video's {count} frames")
    folder = prepare_out_dir(args.out)
    files = planned_files(prompts, count, args.mask_format, not args.no_overlay_video)
    outputs = OutputSet(folder, [ImageOutputs(Path(os.path.abspath(video)), ".", tuple(prompts), tuple(files))])
    outputs.check()  # before the slow model load
    device = parse_device(args.device)
    model = load_model(args.checkpoint, args.config).to(device).eval()
    results = predict_video(model, frames, prompts, prompt_frame=args.prompt_frame, reprompt_every=args.reprompt_every,
                            max_cond_frames=args.max_cond_frames, offload_state_to_cpu=args.offload_state)
    areas = [[0, 0] for _ in prompts]  # per object: frames with a non-empty mask, summed area
    prompted = []
    with outputs.writing():
        from tqdm import tqdm

        start = time.perf_counter()
        for result in tqdm(results, total=count, unit="frame", desc="tracking", disable=args.no_progress):
            masks = result.masks.numpy()
            write_masks(folder, prompts, result.index, count, masks, args.mask_format)
            for i, mask in enumerate(masks):
                areas[i][0] += bool(mask.any())
                areas[i][1] += int(mask.sum())
            if result.prompted:
                prompted.append(result.index)
        seconds = time.perf_counter() - start
        if not args.no_overlay_video:
            write_overlay_video(folder, frames, prompts, args.mask_format, args.fps or frames.fps or 25.0)
        write_summary(folder, {
            "video": str(os.path.abspath(video)), "frames": count, "height": frames.size[0], "width": frames.size[1],
            "prompt_frame": args.prompt_frame, "reprompt_every": args.reprompt_every, "prompted_frames": sorted(prompted),
            "mask_format": args.mask_format,
            "objects": [{"id": i, "prompt": p, "masks": folder_ if args.mask_format == "per-object" else "masks",
                         "frames_with_mask": areas[i][0], "mean_area_px": round(areas[i][1] / count, 1)}
                        for i, (p, folder_) in enumerate(zip(prompts, object_folders(prompts)))],
            "tracking_seconds": round(seconds, 3), "frames_per_second": round(count / max(seconds, 1e-9), 2),
            **peak_memory_mib(device),
        })
    frames.close()
    print(f"{count} frames x {len(prompts)} objects -> {folder} ({count / max(seconds, 1e-9):.1f} frames/s)")
    return 0
