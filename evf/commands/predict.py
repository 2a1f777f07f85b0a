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

The checkpoint is either an official EVF-SAM release folder (config.json + weights + tokenizer)
or a Lightning ``.ckpt`` from ``evf fit``; the latter is rebuilt from the run's ``config.yaml``
(saved by LightningCLI next to the run's ``checkpoints/`` folder) or from ``--config``.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from evf.bulk_inputs import collect_items, is_glob, read_text_lines
from evf.checkpoint import CheckpointError, read_checkpoint
from evf.errors import OneLineParser, UserError, first_line
from evf.io import read_image, save_png_atomic
from evf.locks import is_rank_zero
from evf.output_set import ImageOutputs, OutputSet
from evf.predictor import DEFAULT_MAX_BATCH

if TYPE_CHECKING:  # the model is imported lazily so `evf predict --help` stays fast
    from evf.model import EVFSAM

# First colour is the official EVF-SAM overlay colour; the rest keep several masks apart.
COLOURS = ((50, 120, 220), (220, 60, 50), (60, 180, 75), (240, 200, 30), (145, 30, 180),
           (70, 200, 220), (240, 50, 230), (250, 150, 40), (128, 128, 128), (0, 128, 128))
OVERLAY_NAME = "overlay.png"
RUN_CONFIG_NAME = "config.yaml"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="evf predict", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="EVF-SAM release folder (or its weights file), or a Lightning .ckpt from 'evf fit'")
    p.add_argument("--config", help="experiment/run YAML for a .ckpt (default: the run's config.yaml)")
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
    return p.parse_args(list(argv))


# -- inputs -------------------------------------------------------------------------------------
def command_line_prompt(text: str, label: str) -> str:
    """A prompt given on the command line, stripped; refused if blank or not UTF-8. Python hands a byte that is
    not UTF-8 through ``sys.argv`` as a lone surrogate (``surrogateescape``), which no tokenizer can take."""
    bad = next((i for i, char in enumerate(text) if "\ud800" <= char <= "\udfff"), None)
    if bad is not None:
        byte = ord(text[bad]) - 0xDC00 if "\udc80" <= text[bad] <= "\udcff" else None
        offset = len(text[:bad].encode("utf-8", "surrogateescape"))
        shown = f"bad byte 0x{byte:02x}" if byte is not None else "a lone surrogate"
        raise UserError(f"{label} is not UTF-8 text ({shown} at offset {offset})")
    if not text.strip():
        raise UserError(f"{label} is empty")
    return text.strip()


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


def prepare_out_dir(out: str) -> Path:
    """Create ``out`` and prove it is writable before any work is done."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".evf-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output folder {folder} is not writable: {exc.strerror or type(exc).__name__}") from None
    return folder


# -- model loading ------------------------------------------------------------------------------
def find_run_config(ckpt: Path) -> Path:
    """``config.yaml`` of the run: LightningCLI saves it in the log dir, checkpoints go to ``<log dir>/checkpoints``."""
    for folder in (ckpt.parent, ckpt.parent.parent, ckpt.parent.parent.parent):
        if (folder / RUN_CONFIG_NAME).is_file():
            return folder / RUN_CONFIG_NAME
    raise UserError(f"no {RUN_CONFIG_NAME} found next to {ckpt} or above it; pass the run's YAML with --config")


def module_from_config(config: Path):
    """An untrained ``EVFSAMModule`` built from the ``model:`` section of a LightningCLI YAML."""
    from jsonargparse import ArgumentParser

    from evf.config_errors import building_from_config, explain_config_error, read_yaml_file
    from evf.module import EVFSAMModule

    data = read_yaml_file(config)
    if not isinstance(data.get("model"), dict):
        raise UserError(f"config {config} has no 'model:' section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(EVFSAMModule, "model", fail_untyped=False)
    try:
        parsed = parser.parse_object({"model": data["model"]})
    except Exception as exc:  # noqa: BLE001 (jsonargparse raises ArgumentError, but also TypeError/ValueError)
        raise UserError(f"config {config}: {explain_config_error(str(exc))}") from None
    with building_from_config(f"config {config}"):
        return parser.instantiate_classes(parsed).model


def load_lightning_checkpoint(ckpt: Path, config: Path | None):
    """The ``EVFSAM`` inside a ``.ckpt``, restored through ``EVFSAMModule``'s own checkpoint hooks."""
    config = config or find_run_config(ckpt)
    checkpoint = read_checkpoint(ckpt)  # before the model is built: a bad file fails fast
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt} is not a Lightning checkpoint (no 'state_dict')")
    module = module_from_config(config)
    module.on_load_checkpoint(checkpoint)  # lets the module restore what it left out (e.g. frozen weights)
    module.checkpoint_source = str(ckpt)  # named by its error if the weights do not fit
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return module.model


def load_model(checkpoint: str, config: str | None):
    from evf.model import EVFSAM

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if config is not None and not Path(config).is_file():
        raise UserError(f"config not found: {config}")
    if path.is_dir() or (path.suffix != ".ckpt" and (path.parent / "config.json").is_file()):
        return EVFSAM.from_pretrained(path)
    return load_lightning_checkpoint(path, Path(config) if config else None)


# -- outputs ------------------------------------------------------------------------------------
def slug(text: str, limit: int = 40) -> str:
    """File-name-safe, lower-case version of a prompt (``"The red square!"`` -> ``the-red-square``)."""
    words = re.findall(r"\w+", text.lower())
    return "-".join(words)[:limit].strip("-") or "prompt"


def mask_names(prompts: Sequence[str]) -> list[str]:
    width = max(2, len(str(len(prompts) - 1)))
    return [f"{i:0{width}d}_{slug(p)}.png" for i, p in enumerate(prompts)]


def overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``image`` ``uint8 [H, W, 3]`` with mask ``i`` (``[N, H, W]`` bool) blended 50% with ``COLOURS[i]``."""
    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        colour = np.array(COLOURS[i % len(COLOURS)], dtype=np.float32)
        out[mask] = 0.5 * out[mask] + 0.5 * colour
    return out.round().astype(np.uint8)


def image_file_names(prompts: Sequence[str]) -> list[str]:
    """The files one image gets: a mask per prompt, then the overlay."""
    return [*mask_names(prompts), OVERLAY_NAME]


def image_outputs(image: str | Path, folder: str, prompts: Sequence[str]) -> ImageOutputs:
    """What a call writes for one image into ``--out/folder`` (``"."``: straight into ``--out``)."""
    names = image_file_names(prompts)
    files = names if folder == "." else [f"{folder}/{name}" for name in names]
    return ImageOutputs(Path(os.path.abspath(image)), folder, tuple(prompts), tuple(files))


def write_outputs(folder: Path, image: np.ndarray, prompts: Sequence[str], masks: np.ndarray) -> list[Path]:
    written = [folder / name for name in image_file_names(prompts)]
    for path, mask in zip(written, masks):
        save_png_atomic(path, mask.astype(np.uint8) * 255)
    save_png_atomic(written[-1], overlay(image, masks))
    return written


def parse_device(device: str) -> torch.device:
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {device!r}: {first_line(exc)}") from None


def load_inputs(args) -> tuple[np.ndarray, Path, EVFSAM]:
    """Image, output folder and model of an inference command; cheap checks run before the slow model load."""
    image = read_image(args.image[0] if isinstance(args.image, list) else args.image)
    folder = prepare_out_dir(args.out)
    device = parse_device(args.device)
    return image, folder, load_model(args.checkpoint, args.config).to(device).eval()


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
    model = load_model(args.checkpoint, args.config)

    def write(name: Path, image: np.ndarray, image_prompts: Sequence[str], masks: np.ndarray) -> None:
        write_outputs(folder / name, image, image_prompts, masks)

    with outputs.writing(lead):  # process 0 writes the manifest once every process has written its images
        done = run_bulk(model, items, write, accelerator, devices, args.max_batch, args.threads, progress=not args.no_progress)
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
    model = load_model(args.checkpoint, args.config).to(device).eval()
    with outputs.writing():
        written = write_outputs(folder, image, prompts, model.predict(image, prompts, max_batch=args.max_batch).numpy())
    for path in written:
        print(path)
    return 0


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}")
    one_image = is_one_image_file(args)
    prompts = read_prompts(args.prompt, args.prompt_file, required=args.manifest is None)
    return predict_one(args, prompts) if one_image else predict_many(args, prompts)
