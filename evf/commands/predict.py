"""``evf predict``: segment one image or many images with one or more text prompts.

One image file: writes one 0/255 mask PNG per prompt (``00_the-red-square.png``) and one ``overlay.png``
(each mask blended 50% with its own colour) into ``--out``, every file atomically; prints what it wrote.

Many images (folders, globs, several files, or a JSONL ``--manifest`` with each image's own prompts):
the same files per image in ``--out/<image path relative to the inputs' common folder>/``, e.g.
``--image photos/`` writes ``out/zebra.jpg/00_the-zebra.png`` for ``photos/zebra.jpg``. Images stream
through Lightning's predict loop (``--devices N``: one process per device), each embedded once, decoded
in threads ahead of the model, with a progress bar; see ``evf.bulk``. Every input is checked before
anything is written.

Each call's outputs are one unit (``evf.output_set``): ``--out/predictions.json``, written last, lists exactly
the files of the call and says ``"complete"``; the next call removes those files before writing its own, so
no stale mask of an earlier call stays behind. A call refuses to overwrite an input image or a file it did not
write, and Ctrl-C leaves the manifest saying ``"interrupted"`` (exit 130).

``--checkpoint`` is anything ``evf.load`` takes (evf/loading.py): an official EVF-SAM release folder (config.json
+ weights + tokenizer), a Lightning ``.ckpt`` from ``evf fit`` (rebuilt from the run's ``config.yaml``, saved by
LightningCLI next to the run's ``checkpoints/`` folder, or from ``--config``), or a run folder.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evf.bulk_inputs import collect_items, is_glob, read_text_lines
from evf.commands.common import CHECKPOINT_HELP, CONFIG_HELP, command_line_prompt, load_model, parse_device, prepare_out_dir
from evf.errors import OneLineParser, UserError
from evf.io import read_image
from evf.locks import is_rank_zero
from evf.output_set import ImageOutputs, OutputSet
from evf.predictor import DEFAULT_MAX_BATCH
from evf.visualize import image_file_names, write_outputs


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf predict", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--config", help=CONFIG_HELP)
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--image", nargs="+", metavar="PATH",
                        help="image file(s) (gray, RGBA and 16-bit images are converted), folders (searched recursively) "
                             "or quoted glob patterns such as 'photos/**/*.jpg'")
    inputs.add_argument("--manifest", help="JSONL file, one image per line: "
                                           '{"image": "<path relative to the manifest>", "prompts": ["...", ...]}')
    p.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    p.add_argument("--prompt-file", help="UTF-8 text file with one prompt per line (blank lines skipped)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda:0, or cuda with --devices N")
    p.add_argument("--devices", type=int, default=1, help="many images: processes/devices for data-parallel inference")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="prompts decoded at once (bounds memory)")
    p.add_argument("--threads", type=int, default=2, help="many images: threads decoding images ahead of the model")
    p.add_argument("--no-progress", action="store_true", help="many images: no progress bar")
    p.add_argument("--presence-threshold", type=float, metavar="P",
                   help="models with a presence (no-target) head (docs/gres.md): a prompt whose presence score is below P "
                        "gets an empty mask (default: the model's own, 0.5); the scores go into predictions.json "
                        "(many images: with --devices 1)")
    return p.parse_args(list(argv))


# -- inputs -------------------------------------------------------------------------------------
def read_prompts(prompts: Sequence[str], prompt_file: str | None, required: bool = True) -> list[str]:
    out = [command_line_prompt(text, f"--prompt #{i + 1}") for i, text in enumerate(prompts)]
    if prompt_file:
        path = Path(prompt_file)
        lines = read_text_lines(path, "prompt file", UserError)
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise UserError(f"prompt file {path} holds no prompts")
        out += from_file
    if not out and required:
        raise UserError("give at least one --prompt or a --prompt-file")
    return out


# -- outputs ------------------------------------------------------------------------------------
def image_outputs(image: str | Path, folder: str, prompts: Sequence[str]) -> ImageOutputs:
    """What a call writes for one image into ``--out/folder`` (``"."``: straight into ``--out``)."""
    names = image_file_names(prompts)
    files = names if folder == "." else [f"{folder}/{name}" for name in names]
    return ImageOutputs(Path(os.path.abspath(image)), folder, tuple(prompts), tuple(files))


def is_one_image_file(args) -> bool:
    """The single-image form (outputs straight into ``--out``): one ``--image`` that is neither a folder nor a glob."""
    if args.manifest is not None or len(args.image) != 1:
        return False
    path = Path(args.image[0])
    return path.is_file() or (not path.is_dir() and not is_glob(args.image[0]))


def predict_many(args, prompts: list[str]) -> int:
    from evf.bulk import device_choice, run_bulk

    parse_device(args.device)
    accelerator, devices = device_choice(args.device, args.devices)
    items = collect_items(args.image or (), args.manifest, prompts, exclude=args.out, threads=args.threads)
    folder = prepare_out_dir(args.out)
    outputs = OutputSet(folder, [image_outputs(i.image, i.out_name.as_posix(), i.prompts) for i in items])
    lead = is_rank_zero()  # with --devices N, Lightning runs this command again in N-1 more processes
    if lead:
        outputs.check()
    model = with_presence_threshold(load_model(args.checkpoint, args.config), args)

    def write(name: Path, image: np.ndarray, image_prompts: Sequence[str], masks: np.ndarray) -> None:
        write_outputs(folder / name, image, image_prompts, masks)

    with outputs.writing(lead):  # process 0 writes the manifest once every process has written its images
        sink = (lambda name, scores: outputs.presence.__setitem__(Path(name).as_posix(), scores)) if args.devices == 1 else None
        done = run_bulk(model, items, write, accelerator, devices, args.max_batch, args.threads, progress=not args.no_progress,
                        presence_sink=sink)
    if done:
        print(f"{len(items)} images, {sum(len(i.prompts) for i in items)} masks -> {folder}")
    return 0


def predict_one(args, prompts: list[str]) -> int:
    """The single-image form: masks and overlay straight into ``--out``."""
    if args.devices != 1:
        raise UserError(f"--devices {args.devices} is for many images (a folder, glob or --manifest); one image runs on --device")
    image = read_image(args.image[0])
    folder = prepare_out_dir(args.out)
    outputs = OutputSet(folder, [image_outputs(args.image[0], ".", prompts)])
    outputs.check()  # before the slow model load
    device = parse_device(args.device)
    model = with_presence_threshold(load_model(args.checkpoint, args.config), args).to(device).eval()
    with outputs.writing():
        result = model.predict_with_scores(image, prompts, max_batch=args.max_batch)
        if result.presence is not None:
            outputs.presence["."] = result.presence.tolist()
        written = write_outputs(folder, image, prompts, result.masks.numpy())
    for path in written:
        print(path)
    return 0


def with_presence_threshold(model, args):
    """``model`` with ``--presence-threshold`` applied; refused for a model without a presence head."""
    if args.presence_threshold is not None:
        if getattr(model, "presence", None) is None:
            raise UserError(f"--presence-threshold: {args.checkpoint} has no presence head (docs/gres.md)")
        model.presence_threshold = args.presence_threshold
    return model


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}")
    one_image = is_one_image_file(args)
    prompts = read_prompts(args.prompt, args.prompt_file, required=args.manifest is None)
    return predict_one(args, prompts) if one_image else predict_many(args, prompts)
