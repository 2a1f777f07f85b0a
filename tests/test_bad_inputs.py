"""Bad input to every ``evf`` command: one ``evf: error:`` line naming the problem, exit code 2,
no traceback (unless ``--debug``), and no output file overwritten or half-written.

docs/errors.md lists each case and its message; keep the two in step.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evf.cli import main as evf
from tests.cli_helpers import assert_one_line_error, snapshot
from tests.tiny_artifacts import write_image, write_release_folder

REPO = Path(__file__).resolve().parents[1]


# -- fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tiny_run):
    _, ckpt, config = tiny_run
    return ckpt, config


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "image.png", size=(64, 64))


@pytest.fixture
def out(tmp_path):
    """An output folder holding the result of an earlier run: it must survive every failed run byte for byte."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "overlay.png").write_bytes(b"earlier result")
    (folder / "00_the-square.png").write_bytes(b"earlier mask")
    files = ["00_the-square.png", "overlay.png"]  # the earlier call's manifest: these files are evf's to replace
    (folder / "predictions.json").write_text(json.dumps({"format": 1, "status": "complete", "files": files}))
    return folder


def predict_args(checkpoint, image, out, *prompts, extra=()):
    args = ["predict", "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out)]
    for prompt in prompts:
        args += ["--prompt", prompt]
    return args + list(extra)


def check_predict_fails(capsys, args, out, *needles) -> str:
    before = snapshot(out)
    code = evf(args)
    line = assert_one_line_error(code, capsys.readouterr().err, *needles)
    assert snapshot(out) == before  # nothing overwritten, no temporary files left behind
    return line


def png_bytes(size=(64, 64), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    import io

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def zero_width_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)  # width 0, height 5, 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# -- predict: images ------------------------------------------------------------------------------
@pytest.mark.parametrize("case, content, needle", [
    ("missing", None, "image not found"),
    ("corrupt", b"this is not an image" * 10, "cannot read image"),
    ("truncated", png_bytes()[:2000], "cannot read image"),
    ("empty-file", b"", "the file is empty (0 bytes)"),
    ("zero-size", zero_width_png(), "cannot read image"),
])
def test_predict_bad_image(release, out, tmp_path, capsys, case, content, needle):
    path = tmp_path / f"{case}.png"
    if content is not None:
        path.write_bytes(content)
    check_predict_fails(capsys, predict_args(release, path, out, "the square"), out, needle, path.name)


@pytest.mark.parametrize("kind", ["gray", "gray_alpha", "rgba", "gray16"])
def test_predict_converts_odd_images(release, tmp_path, capsys, kind):
    path = write_image(tmp_path / f"{kind}.png", kind=kind)
    assert evf(predict_args(release, path, tmp_path / "out", "the square")) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "00_the-square.png") as im:
        assert im.size == (56, 40) and im.mode == "L"


# -- predict: prompts -----------------------------------------------------------------------------
@pytest.mark.parametrize("prompts, needle", [(["the square", ""], "#2 is empty"), (["   "], "#1 is empty"),
                                             ([], "at least one")])
def test_predict_empty_prompt(release, image, out, capsys, prompts, needle):
    check_predict_fails(capsys, predict_args(release, image, out, *prompts), out, needle)


def test_predict_non_utf8_prompt_file(release, image, out, tmp_path, capsys):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_bytes("the square\nle carré\n".encode("latin-1"))
    check_predict_fails(capsys, predict_args(release, image, out, extra=["--prompt-file", str(prompt_file)]),
                        out, "not UTF-8", "prompts.txt")


def test_predict_empty_or_missing_prompt_file(release, image, out, tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    check_predict_fails(capsys, predict_args(release, image, out, extra=["--prompt-file", str(blank)]), out, "no prompts")
    check_predict_fails(capsys, predict_args(release, image, out, extra=["--prompt-file", str(tmp_path / "none.txt")]),
                        out, "prompt file not found")


LONG_PROMPT = " ".join(["the red square on the left"] * 40)  # far beyond any tokenizer maximum


def test_predict_overlong_prompt_is_truncated_with_warning(fitted, image, tmp_path, capsys):
    ckpt, config = fitted
    short = edited_config(config, tmp_path, "max_text_length: null", "max_text_length: 16")
    with pytest.warns(UserWarning, match="truncated to 16"):
        code = evf(predict_args(ckpt, image, tmp_path / "out", LONG_PROMPT, extra=["--config", str(short)]))
    assert code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("00_*.png"))) == 1


def test_predict_overlong_prompt_release_folder(release, image, tmp_path, capsys):
    with pytest.warns(UserWarning, match="truncated"):
        code = evf(predict_args(release, image, tmp_path / "out", LONG_PROMPT))
    assert code == 0, capsys.readouterr().err


# -- predict: checkpoints -------------------------------------------------------------------------
def test_predict_missing_checkpoint(image, out, tmp_path, capsys):
    check_predict_fails(capsys, predict_args(tmp_path / "nope.ckpt", image, out, "x"), out, "checkpoint not found")


def test_predict_truncated_lightning_checkpoint(fitted, image, out, tmp_path, capsys):
    ckpt, config = fitted
    bad = tmp_path / "half.ckpt"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    check_predict_fails(capsys, predict_args(bad, image, out, "x", extra=["--config", str(config)]), out,
                        "cannot read checkpoint", "half.ckpt")


def test_predict_wrong_architecture_lightning_checkpoint(fitted, image, out, tmp_path, capsys):
    ckpt, config = fitted
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if k.endswith("projector.0.weight"))
    checkpoint["state_dict"][key] = torch.zeros(3, 3)  # as if trained with a different encoder width
    bad = tmp_path / "other.ckpt"
    torch.save(checkpoint, bad)
    check_predict_fails(capsys, predict_args(bad, image, out, "x", extra=["--config", str(config)]), out,
                        "does not fit", "wrong shape", "projector.0.weight")


def test_predict_checkpoint_without_config(fitted, image, out, tmp_path, capsys):
    ckpt, _ = fitted
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(ckpt.read_bytes())
    check_predict_fails(capsys, predict_args(lonely, image, out, "x"), out, "config.yaml", "--config")
    check_predict_fails(capsys, predict_args(lonely, image, out, "x", extra=["--config", str(tmp_path / "no.yaml")]),
                        out, "config not found")


def test_predict_release_folder_problems(release, image, out, tmp_path, capsys):
    import shutil

    truncated = shutil.copytree(release, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    check_predict_fails(capsys, predict_args(truncated, image, out, "x"), out, "cannot read checkpoint", "model.safetensors")

    llava = write_release_folder(tmp_path / "llava", architecture="LlavaForCausalLM")
    check_predict_fails(capsys, predict_args(llava, image, out, "x"), out, "unsupported architecture", "LlavaForCausalLM")

    # an EVF-SAM2 config over EVF-SAM (SAM-1) weights: the config's sam_scale or the weights are refused
    sam2 = write_release_folder(tmp_path / "sam2", architecture="EvfSam2Model")
    check_predict_fails(capsys, predict_args(sam2, image, out, "x"), out, "does not fit")

    no_weights = shutil.copytree(release, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    check_predict_fails(capsys, predict_args(no_weights, image, out, "x"), out, "no weights")

    not_release = tmp_path / "plain-folder"
    not_release.mkdir()
    check_predict_fails(capsys, predict_args(not_release, image, out, "x"), out, "no config.json")


def test_predict_weights_of_another_architecture(release, image, out, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    other = shutil.copytree(release, tmp_path / "other")
    state = load_file(str(other / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("text_hidden_fcs.")}  # e.g. a plain SAM file
    save_file(state, str(other / "model.safetensors"))
    check_predict_fails(capsys, predict_args(other, image, out, "x"), out, "does not fit", "missing")


# -- predict: output folder -----------------------------------------------------------------------
def test_predict_output_folder_not_writable(release, image, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = evf(predict_args(release, image, blocker / "out", "x"))
    assert_one_line_error(code, capsys.readouterr().err, "not writable", "a-file")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_predict_read_only_output_folder(release, image, out, capsys):
    out.chmod(0o500)
    try:
        check_predict_fails(capsys, predict_args(release, image, out, "x"), out, "not writable")
    finally:
        out.chmod(0o700)


def test_predict_usage_error_is_one_line(capsys):
    assert_one_line_error(evf(["predict", "--image", "x.png"]), capsys.readouterr().err, "required", "--checkpoint")


# -- tracebacks only on request -------------------------------------------------------------------
def test_debug_shows_the_traceback(tmp_path, capsys):
    """``--debug`` re-raises the error instead of printing one line (``python -m evf.cli`` then prints its traceback)."""
    from evf.io import ImageReadError

    args = ["predict", "--checkpoint", str(tmp_path / "none"), "--image", str(tmp_path / "none.png"), "--prompt", "x",
            "--out", str(tmp_path / "out")]
    assert_one_line_error(evf(args), capsys.readouterr().err, "image not found")
    with pytest.raises(ImageReadError, match="none.png"):
        evf([*args, "--debug"])
    assert not (tmp_path / "out").exists()


# -- fit / validate / test (LightningCLI) ---------------------------------------------------------
def edited_config(config: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = config.read_text()
    assert old in text
    path = tmp_path / f"edited-{abs(hash((old, new)))}.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_lightning_missing_config(tmp_path, capsys, subcommand):
    code = evf([subcommand, "--config", str(tmp_path / "nope.yaml")])
    assert_one_line_error(code, capsys.readouterr().err, "nope.yaml", "does not exist")


@pytest.mark.parametrize("old, new, needles", [
    ("  warmup_steps:", "  warmup_step:", ("model.warmup_step", "did you mean", "model.warmup_steps")),
    ("  max_steps:", "  max_step:", ("trainer.max_step", "did you mean", "trainer.max_steps")),
    ("          size: tiny", "          sise: tiny", ("sise", "did you mean 'size'")),
])
def test_lightning_unknown_key_suggests_nearest(fitted, tmp_path, capsys, old, new, needles):
    _, config = fitted
    code = evf(["fit", "--config", str(edited_config(config, tmp_path, old, new))])
    assert_one_line_error(code, capsys.readouterr().err, *needles)


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_lightning_missing_checkpoint(fitted, tmp_path, capsys, subcommand):
    _, config = fitted
    code = evf([subcommand, "--config", str(config), "--ckpt_path", str(tmp_path / "missing.ckpt")])
    assert_one_line_error(code, capsys.readouterr().err, "not found", "missing.ckpt")


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_lightning_truncated_checkpoint(fitted, tmp_path, capsys, subcommand):
    ckpt, config = fitted
    bad = tmp_path / "half.ckpt"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code = evf([subcommand, "--config", str(config), "--ckpt_path", str(bad)])
    assert_one_line_error(code, capsys.readouterr().err, "truncated or corrupted", "half.ckpt")


def test_lightning_wrong_architecture_checkpoint(fitted, tmp_path, capsys):
    ckpt, config = fitted
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if k.endswith("projector.0.weight"))
    checkpoint["state_dict"][key] = torch.zeros(3, 3)
    bad = tmp_path / "other.ckpt"
    torch.save(checkpoint, bad)
    code = evf(["validate", "--config", str(config), "--ckpt_path", str(bad)])
    assert_one_line_error(code, capsys.readouterr().err, f"{bad} does not fit the model built from its config", "projector.0.weight")


def test_lightning_output_folder_not_writable(fitted, tmp_path, capsys):
    _, config = fitted
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code = evf(["fit", "--config", str(config), "--trainer.default_root_dir", str(blocker / "run"),
                "--trainer.logger", "false", "--trainer.max_steps", "1"])
    assert_one_line_error(code, capsys.readouterr().err, "a-file")
    assert blocker.read_text() == "keep me"


# -- prepare, cache, attention, sweep, table -------------------------------------------------------
def refcoco_config(config: Path, tmp_path: Path, root: Path, name: str, sam: dict | None = None) -> Path:
    """The run's config reading a RefCOCO-format folder, optionally with another SAM backend."""
    import yaml

    data = yaml.safe_load(config.read_text())
    data["data"] = {"class_path": "datamodules.RefCocoDataModule", "init_args": {"root": str(root), "batch_size": 2}}
    if sam is not None:
        data["model"]["model"]["init_args"]["sam"] = sam
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def zero_sample_root(tmp_path_factory):
    """A RefCOCO-format folder (real file layout) whose refs files hold no referring expressions."""
    import pickle

    from datamodules.testing.refcoco import write

    root = tmp_path_factory.mktemp("empty-refcoco")
    write(root)
    for refs in root.rglob("refs(*).p"):
        refs.write_bytes(pickle.dumps([], protocol=2))
    return root


def test_lightning_dataset_root_with_zero_samples(fitted, zero_sample_root, capsys):
    _, config = fitted
    code = evf(["validate", "--config", str(config), "--data", "datamodules.RefCocoDataModule",
                "--data.init_args.root", str(zero_sample_root)])
    assert_one_line_error(code, capsys.readouterr().err, "no refs in split 'val'", "refs(unc).p")


# -- prepare --------------------------------------------------------------------------------------
def test_prepare_bad_roots(zero_sample_root, tmp_path, capsys):
    code = evf(["prepare", "refcoco", "--check", "--root", str(zero_sample_root)])
    cap = capsys.readouterr()
    assert code != 0 and "Traceback" not in cap.err
    assert "no refs in split" in cap.out + cap.err
    assert_one_line_error(evf(["prepare", "refcoco", "--check", "--root", str(tmp_path / "none")]),
                          capsys.readouterr().err, "dataset root not found")
    assert_one_line_error(evf(["prepare", "refcocoo", "--check", "--root", str(zero_sample_root)]),
                          capsys.readouterr().err, "unknown dataset 'refcocoo'")


# -- cache ----------------------------------------------------------------------------------------
def test_cache_from_another_backend_is_refused(fitted, tmp_path, capsys):
    from datamodules.testing.refcoco import write

    _, config = fitted
    root = tmp_path / "refcoco"
    write(root)
    cache = tmp_path / "cache"
    sam1 = refcoco_config(config, tmp_path, root, "sam1")
    assert evf(["cache", "--config", str(sam1), "--split", "val", "--out", str(cache)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    efficientsam = {"class_path": "evf.sam.EfficientSamBackend", "init_args": {"variant": "toy"}}
    other = refcoco_config(config, tmp_path, root, "efficientsam", sam=efficientsam)
    code = evf(["validate", "--config", str(other), "--data.init_args.embedding_cache", str(cache)])
    assert_one_line_error(code, capsys.readouterr().err, "embedding cache", "backend", "rebuild")


def test_cache_output_not_writable(fitted, tmp_path, capsys):
    _, config = fitted
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code = evf(["cache", "--config", str(config), "--split", "val", "--out", str(blocker / "cache")])
    assert_one_line_error(code, capsys.readouterr().err, "a-file")
    assert blocker.read_text() == "keep me"


def test_cache_unknown_split(fitted, tmp_path, capsys):
    _, config = fitted
    code = evf(["cache", "--config", str(config), "--split", "trian", "--out", str(tmp_path / "cache")])
    assert_one_line_error(code, capsys.readouterr().err, "trian")


# -- attention ------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [(["--query", "bogus"], "query must be"), (["--layers", "9"], "layers must be within"),
                                           (["--prompt", " "], "empty")])
def test_attention_bad_arguments(release, image, out, capsys, extra, needle):
    args = ["attention", "--checkpoint", str(release), "--image", str(image), "--out", str(out), "--prompt", "the square"]
    check_predict_fails(capsys, args + extra, out, needle)


def test_attention_bad_image_and_checkpoint(release, image, out, tmp_path, capsys):
    base = ["attention", "--out", str(out), "--prompt", "the square"]
    (tmp_path / "bad.png").write_bytes(png_bytes()[:500])
    check_predict_fails(capsys, base + ["--checkpoint", str(release), "--image", str(tmp_path / "bad.png")], out,
                        "cannot read image")
    check_predict_fails(capsys, base + ["--checkpoint", str(tmp_path / "none"), "--image", str(image)], out,
                        "checkpoint not found")


# -- sweep / table --------------------------------------------------------------------------------
def test_sweep_missing_experiment(tmp_path, capsys):
    code = evf(["sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "results")])
    assert_one_line_error(code, capsys.readouterr().err, "experiment file not found", "nope.yaml")
    assert not (tmp_path / "results").exists()


def test_table_missing_results_folder(tmp_path, capsys):
    assert_one_line_error(evf(["table", str(tmp_path / "none")]), capsys.readouterr().err, "no such results folder")
