"""``evf predict`` on many images (folder, glob, several files, JSONL manifest): per-image outputs equal
``EVFSAM.predict``, one sub-folder per image; bad input is one line, exit 2, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evf.bulk import ImageStream, device_choice
from evf.bulk_inputs import BulkItem, output_names, resolve_specs
from evf.cli import main as evf
from evf.io import read_image
from tests.cli_helpers import assert_one_line_error, assert_outputs_match
from tests.tiny_artifacts import write_image

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["the red square", "blue"]
# relative path -> (size, write_image kind); one image in a sub-folder, sizes and channel counts differ
IMAGES = {"a.png": ((40, 56), "rgb"), "b.png": ((30, 64), "gray"), "sub/c.png": ((48, 36), "rgba")}


@pytest.fixture(scope="module")
def model(release):
    from evf.model import EVFSAM

    return EVFSAM.from_pretrained(release).eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for seed, (name, (size, kind)) in enumerate(IMAGES.items()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(folder / name, kind=kind, size=size, seed=seed)
    (folder / "notes.txt").write_text("not an image: skipped in a folder")
    return folder


def run(capsys, release, out, *inputs, prompts=PROMPTS, extra=()):
    args = ["predict", "--checkpoint", str(release), "--out", str(out), *map(str, inputs), *extra]
    for p in prompts:
        args += ["--prompt", p]
    code = evf(args)
    return code, capsys.readouterr()


def assert_layout(out: Path, model, photos: Path, expected: dict[str, list[str]]):
    """``out/<relative image path>/`` holds exactly ``predict``'s masks and overlay of that image."""
    folders = sorted(str(p.parent.relative_to(out)) for p in out.rglob("overlay.png"))
    assert folders == sorted(expected)
    for name, prompts in expected.items():
        image = read_image(photos / name)
        assert_outputs_match(out / name, image, prompts, model.predict(image, prompts).numpy())


def test_folder(release, model, photos, tmp_path, capsys):
    code, cap = run(capsys, release, tmp_path / "out", "--image", photos)
    assert code == 0, cap.err
    assert cap.out.strip() == f"3 images, 6 masks -> {tmp_path / 'out'}"
    assert "3/3" in cap.err  # the progress bar
    assert_layout(tmp_path / "out", model, photos, {name: PROMPTS for name in IMAGES})


def test_glob_and_several_files(release, model, photos, tmp_path, capsys):
    code, cap = run(capsys, release, tmp_path / "glob", "--image", f"{photos}/**/*.png", extra=["--no-progress"])
    assert code == 0, cap.err
    assert cap.err == ""
    assert_layout(tmp_path / "glob", model, photos, {name: PROMPTS for name in IMAGES})
    code, cap = run(capsys, release, tmp_path / "files", "--image", photos / "sub/c.png", photos / "a.png",
                    extra=["--max-batch", "1"])
    assert code == 0, cap.err
    assert_layout(tmp_path / "files", model, photos, {"a.png": PROMPTS, "sub/c.png": PROMPTS})


def test_manifest_with_prompts_per_image(release, model, photos, tmp_path, capsys):
    own = {"a.png": ["the left circle", "a ring", "blue"], "sub/c.png": ["the square"], "b.png": ["red"]}
    manifest = photos / "list.jsonl"
    lines = [json.dumps({"image": name, "prompts": prompts}) for name, prompts in own.items()]
    manifest.write_text(lines[0] + "\n\n" + lines[1] + "\n" + json.dumps({"image": "b.png"}) + "\n")
    code, cap = run(capsys, release, tmp_path / "out", "--manifest", manifest, prompts=["red"])  # default prompts
    assert code == 0, cap.err
    assert cap.out.strip().startswith("3 images, 5 masks")
    assert_layout(tmp_path / "out", model, photos, own)


def test_output_folder_inside_input_folder_is_not_read(release, photos, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "x.png", seed=9)
    for _ in range(2):  # the second run must not treat the first run's PNGs as images
        code, cap = run(capsys, release, folder / "masks", "--image", folder, prompts=["blue"])
        assert code == 0, cap.err
        assert cap.out.startswith("1 images, 1 masks")


def test_output_names_are_injective(tmp_path):
    images = [str(tmp_path / p) for p in ("a.png", "a.jpg", "x/a.png", "x_a.png", "x/y/a.png")]
    names = output_names(images, [str(tmp_path)])
    assert [str(n) for n in names] == ["a.png", "a.jpg", "x/a.png", "x_a.png", "x/y/a.png"]
    assert [str(n) for n in output_names(images[2:3], [str(tmp_path / "x")])] == ["a.png"]


def test_folder_skips_hidden_and_non_images(photos, tmp_path):
    (photos / ".hidden.png").write_bytes(b"")
    images, bases = resolve_specs([str(photos)])
    assert [Path(p).relative_to(photos).as_posix() for p in images] == sorted(IMAGES)
    assert bases == [str(photos)]
    (photos / ".hidden.png").unlink()


def test_existing_file_with_glob_characters_is_a_file(tmp_path):
    odd = write_image(tmp_path / "odd[1].png")
    write_image(tmp_path / "odd1.png")  # what the name would match as a pattern
    assert resolve_specs([str(odd)])[0] == [str(odd)]


def test_image_stream_shards_without_repeats(monkeypatch, photos):
    items = [BulkItem(photos / name, ("p",), Path(name)) for name in sorted(IMAGES)] * 2  # 6 items on 4 processes
    seen = []
    for rank in range(4):
        monkeypatch.setattr("evf.bulk.rank_and_world", lambda rank=rank: (rank, 4))
        stream = ImageStream(items, lambda image: {"shape": image.shape}, threads=2, prefetch=2)
        seen += [(s["out_name"], s["sample"]["shape"]) for s in stream]
    assert sorted(seen) == sorted((str(i.out_name), read_image(i.image).shape) for i in items)


def test_device_choice():
    assert device_choice("cpu", 1) == ("cpu", 1)
    assert device_choice("cpu", 2) == ("cpu", 2)
    assert device_choice("cuda:1", 1) == ("cuda", [1])
    assert device_choice("cuda", 4) == ("cuda", 4)
    with pytest.raises(ValueError, match="--devices 2"):
        device_choice("cuda:0", 2)


# -- bad input: one line naming the file, exit 2, nothing written ---------------------------------
def bad_inputs(case: str, photos: Path, bad: Path) -> tuple[list, list[str]]:
    """``(command-line inputs, words the error line must contain)`` of one bad-input case."""
    good = json.dumps({"image": str(photos / "a.png"), "prompts": ["x"]})
    if case == "glob-matches-nothing":
        return ["--image", f"{photos}/*.jpg"], ["no image files match", "*.jpg"]
    if case == "empty-folder":
        return ["--image", bad], ["no image files", str(bad)]
    if case == "missing-image-in-list":
        return ["--image", photos / "a.png", bad / "gone.png"], ["image not found", "gone.png"]
    if case == "corrupt-image":
        (bad / "c.png").write_bytes(b"junk")
        return ["--image", photos / "a.png", bad / "c.png"], ["cannot read image", "c.png"]
    if case == "manifest-missing":
        return ["--manifest", bad / "none.jsonl"], ["manifest not found", "none.jsonl"]
    text, needles = {
        "manifest-bad-json": (good + '\n{"image": "a.png",\n', ["m.jsonl line 2", "not valid JSON"]),
        "manifest-missing-image": (good + '\n{"image": "nope.png", "prompts": ["x"]}', ["image not found", "nope.png", "line 2"]),
        "manifest-no-prompts": (json.dumps({"image": str(photos / "a.png")}), ["m.jsonl line 1", '"prompts"']),
        "manifest-duplicate": (good + "\n" + good, ["m.jsonl line 2", "already on line 1"]),
        "manifest-empty-prompt": (good.replace('["x"]', '["x", " "]'), ["m.jsonl line 1", "prompt #2 is empty"]),
    }[case]
    (bad / "m.jsonl").write_text(text)
    return ["--manifest", bad / "m.jsonl"], needles


@pytest.mark.parametrize("case", ["glob-matches-nothing", "empty-folder", "missing-image-in-list", "corrupt-image",
                                  "manifest-bad-json", "manifest-missing-image", "manifest-no-prompts",
                                  "manifest-duplicate", "manifest-missing", "manifest-empty-prompt"])
def test_bad_input(release, photos, tmp_path, capsys, case):
    bad = tmp_path / "bad"
    bad.mkdir()
    inputs, needles = bad_inputs(case, photos, bad)
    out = tmp_path / "out"
    code, cap = run(capsys, release, out, *inputs, prompts=[] if case.startswith("manifest") else PROMPTS)
    assert_one_line_error(code, cap.err, *needles)
    assert not out.exists() and cap.out == ""


def test_devices_needs_many_images(release, photos, tmp_path, capsys):
    code, cap = run(capsys, release, tmp_path / "out", "--image", photos / "a.png", extra=["--devices", "2"])
    assert_one_line_error(code, cap.err, "--devices 2")
    code, cap = run(capsys, release, tmp_path / "out", "--image", photos, extra=["--device", "cuda:0", "--devices", "2"])
    assert_one_line_error(code, cap.err, "--devices 2")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_cpu_processes_write_the_same_files(release, photos, tmp_path):
    """``--devices 2`` on CPU: Lightning starts a second process (DDP, gloo); each image is done once, same bytes."""
    outs = {}
    for devices in ("1", "2"):
        out = tmp_path / f"out{devices}"
        command = [sys.executable, "-m", "evf.cli", "predict", "--checkpoint", str(release), "--image", str(photos),
                   "--prompt", "blue", "--out", str(out), "--devices", devices, "--no-progress"]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                                env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("3 images, 3 masks") == 1  # printed by process 0 only
        outs[devices] = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # 3 images x (mask + overlay), and the manifest process 0 wrote once both processes had finished
    assert len(outs["1"]) == 3 * 2 + 1 and outs["1"] == outs["2"]
    assert json.loads(outs["2"]["predictions.json"])["status"] == "complete"
