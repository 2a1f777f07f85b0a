"""``evf predict --out``: each call's outputs are one unit (``evf.output_set``).

A second call leaves no stale file of the first; inputs and files evf did not write are never overwritten;
Ctrl-C is exit 130 with a manifest that says "interrupted", never "complete".
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evf.cli import main as evf
from evf.locks import FolderLock
from evf.output_set import LOCK_NAME, MANIFEST_NAME
from tests.cli_helpers import assert_one_line_error, snapshot
from tests.tiny_artifacts import write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        write_image(folder / name, size=(24, 32), seed=seed)
    return folder


def predict(capsys, release, out, *inputs, prompts=("red", "blue", "the circle")):
    args = ["predict", "--checkpoint", str(release), "--out", str(out), "--no-progress", *map(str, inputs)]
    for p in prompts:
        args += ["--prompt", p]
    code = evf(args)
    return code, capsys.readouterr()


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


def interrupted_line(out: Path) -> str:
    return f"evf: error: interrupted: the outputs in {out} are incomplete ({MANIFEST_NAME} says 'interrupted'); run the command again"


@pytest.mark.parametrize("form", ["one-image", "many-images"])
def test_second_call_leaves_no_stale_output_of_the_first(release, photos, tmp_path, capsys, form):
    out = tmp_path / "out"
    first = ["--image", photos / "a.png"] if form == "one-image" else ["--image", photos]
    second = ["--image", photos / "b.png"] if form == "one-image" else ["--image", photos / "b.png", photos / "c.png"]
    code, cap = predict(capsys, release, out, *first)
    assert code == 0, cap.err
    (out / "notes.txt").write_text("the user's own file")
    code, cap = predict(capsys, release, out, *second, prompts=["green"])
    assert code == 0, cap.err
    folders = ["."] if form == "one-image" else ["b.png", "c.png"]
    expected = sorted(f"{f}/{n}".removeprefix("./") for f in folders for n in ("00_green.png", "overlay.png"))
    # exactly this call's files (no 01_blue.png of the first); the user's file kept; no empty a.png/ left
    assert sorted(set(files_in(out)) - {MANIFEST_NAME}) == sorted([*expected, "notes.txt"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f for f in folders if f != "."]
    assert manifest(out)["status"] == "complete" and sorted(manifest(out)["files"]) == expected
    assert [image["prompts"] for image in manifest(out)["images"]] == [["green"]] * len(folders)


@pytest.mark.parametrize("form", ["overlay.png", "image-folder", "earlier-output"])
def test_an_input_inside_out_is_never_overwritten(release, photos, tmp_path, capsys, form):
    out = tmp_path / "out"
    out.mkdir()
    needle = "refusing to overwrite input image"
    if form == "overlay.png":  # the single-image form would write its overlay over the input
        inputs = ["--image", write_image(out / "overlay.png", seed=5)]
    elif form == "image-folder":  # two files in --out: the outputs of a.png would go into the folder --out/a.png/
        inputs = ["--image", write_image(out / "a.png", seed=6), write_image(out / "b.png", seed=7)]
    else:  # a mask of the earlier call as the input: replacing that call's files would remove it
        assert predict(capsys, release, out, "--image", photos / "a.png")[0] == 0
        inputs, needle = ["--image", out / "01_blue.png"], "refusing to remove input image"
    before = snapshot(out)
    code, cap = predict(capsys, release, out, *inputs, prompts=["green"])
    assert_one_line_error(code, cap.err, needle, str(inputs[1]))
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)  # no lock, no manifest


def test_files_evf_did_not_write_are_refused_not_overwritten(release, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlay.png").write_bytes(b"someone's overlay")
    (out / "01_blue.png").write_bytes(b"someone's mask")
    before = snapshot(out)
    code, cap = predict(capsys, release, out, "--image", photos / "a.png")
    line = assert_one_line_error(code, cap.err, "refusing to overwrite", "(and 1 more)", "no earlier evf predict listed")
    assert str(out / "01_blue.png") in line
    assert snapshot(out) == before
    # the same files listed by an earlier call's manifest are evf's: replaced
    (out / MANIFEST_NAME).write_text(json.dumps({"format": 1, "status": "complete", "files": ["overlay.png", "01_blue.png"]}))
    code, cap = predict(capsys, release, out, "--image", photos / "a.png")
    assert code == 0, cap.err
    assert (out / "overlay.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "Expecting property name"),
    (json.dumps({"format": 1, "files": ["../photos/a.png"]}), "no list of relative 'files'"),
    (json.dumps({"status": "complete", "files": []}), "not format 1"),
])
def test_a_manifest_evf_did_not_write_is_refused(release, photos, tmp_path, capsys, content, needle):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(content)
    code, cap = predict(capsys, release, out, "--image", photos)
    assert_one_line_error(code, cap.err, f"{out / MANIFEST_NAME} is not an output manifest evf predict wrote", needle)
    assert snapshot(out) == {MANIFEST_NAME: content.encode()} and (photos / "a.png").is_file()


def test_a_second_call_on_a_folder_in_use_is_refused(release, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out / LOCK_NAME, f"output folder {out}"):  # another call, mid-way
        code, cap = predict(capsys, release, out, "--image", photos)
    assert_one_line_error(code, cap.err, f"output folder {out} is in use by pid {os.getpid()}")
    assert files_in(out) == []


def test_an_interrupted_call_says_so(release, photos, tmp_path, capsys, monkeypatch):
    """KeyboardInterrupt (what SIGINT raises) after the first image: exit 130, one line, manifest 'interrupted'."""
    import evf.commands.predict as command

    written, write = [], command.write_outputs

    def interrupt_after_one_image(folder, *args):
        if written:
            raise KeyboardInterrupt
        written.append(write(folder, *args))

    out = tmp_path / "out"
    code, cap = predict(capsys, release, out, "--image", photos)  # a complete earlier call: all three images
    assert code == 0, cap.err
    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(command, "write_outputs", interrupt_after_one_image)
    code, cap = predict(capsys, release, out, "--image", photos, prompts=["green"])
    assert code == 130 and cap.out == ""
    assert cap.err.splitlines() == [interrupted_line(out)]
    assert signal.getsignal(signal.SIGINT) == handler  # Lightning's SIG_IGN undone
    assert manifest(out)["status"] == "interrupted"
    # the earlier call's files are gone (none can pass for this call's); only what this call finished is there
    assert files_in(out) == ["a.png/00_green.png", "a.png/overlay.png", MANIFEST_NAME]
    monkeypatch.setattr(command, "write_outputs", write)
    code, cap = predict(capsys, release, out, "--image", photos / "b.png")  # the next call cleans up
    assert code == 0 and manifest(out)["status"] == "complete"
    assert files_in(out) == sorted([MANIFEST_NAME, "00_red.png", "01_blue.png", "02_the-circle.png", "overlay.png"])


SLOW_WRITES = textwrap.dedent("""
    import sys, time
    import evf.commands.predict as command
    from evf.cli import main

    write = command.write_outputs
    def slow_write(*args):  # every image takes a while: the parent's SIGINT lands mid-run
        write(*args)
        time.sleep(0.5)
    command.write_outputs = slow_write
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow  # ~13 s: a fresh interpreter imports torch and Lightning; test_an_interrupted_call_says_so is the fast twin
def test_sigint_mid_run_exits_130_with_an_interrupted_manifest(release, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(20):
        write_image(photos / f"{seed:02d}.png", size=(24, 32), seed=seed)
    out = tmp_path / "out"
    command = [sys.executable, "-c", SLOW_WRITES, "predict", "--checkpoint", str(release), "--image", str(photos),
               "--prompt", "red", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "00.png" / "overlay.png").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stdout == "" and stderr.splitlines() == [interrupted_line(out)]
    assert manifest(out)["status"] == "interrupted" and len(manifest(out)["files"]) == 20 * 2
    assert 2 <= len(files_in(out)) - 1 < 20 * 2  # some images written, not all; no lock or temporary left
    assert not [p for p in out.rglob(".*")]


def test_an_image_named_like_the_manifest_is_refused(release, photos, tmp_path, capsys):
    (photos / MANIFEST_NAME).write_bytes((photos / "a.png").read_bytes())  # a PNG, whatever its name
    code, cap = predict(capsys, release, tmp_path / "out", "--image", photos / MANIFEST_NAME, photos / "b.png")
    assert_one_line_error(code, cap.err, f"an output would be named {tmp_path / 'out' / MANIFEST_NAME}, a name --out keeps")
    assert files_in(tmp_path / "out") == []
