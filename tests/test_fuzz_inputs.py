"""Generated garbage for every file evf reads: exit code 2, exactly one stderr line ``evf: error: ...`` naming the
file, and not one byte written or changed anywhere in the case's folder.

The garbage is deterministic (seeded): random bytes, valid files cut short or with a damaged header, and
well-formed JSON / YAML / pickles whose values have the wrong types. Loaders: images (``evf predict``), a
release folder's ``config.json`` and ``model.safetensors`` (``evf predict``), experiment YAML (``evf fit``),
RefCOCO's ``refs(unc).p`` and ``instances.json`` (``evf prepare --check``), and checkpoints (``evf predict``,
``evf validate --ckpt_path``). Everything runs in-process through ``evf.cli.main``.
"""
from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import zipfile
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here, its log handler writes to the session's stderr, not a closed capsys one)
import pytest
import torch
from PIL import Image

from evf.cli import main as evf

RNG = random.Random(14)  # issue 14


def random_bytes(size: int) -> bytes:
    return bytes(RNG.randrange(256) for _ in range(size))


def damaged(valid: bytes, name: str) -> list[tuple[str, bytes]]:
    """Random bytes, the valid file cut at a quarter / half / 40 bytes before its end, its first 16 bytes overwritten."""
    return [(f"{name}-random-{n}", random_bytes(n)) for n in (1, 100, 3000)] + [
        (f"{name}-cut-{part}", valid[:cut]) for part, cut in (("quarter", len(valid) // 4), ("half", len(valid) // 2),
                                                             ("end", len(valid) - 40))] + [
        (f"{name}-header", random_bytes(16) + valid[16:])]


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (48, 40), random_bytes(48 * 40 * 3)).save(buffer, format=fmt)
    return buffer.getvalue()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(capsys, args: list[str], folder: Path, bad_file: Path) -> None:
    before = tree(folder)
    code = evf(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("evf: error: "), err
    assert str(bad_file) in err, err
    assert tree(folder) == before  # nothing written, nothing changed, no temporary file left


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    from datamodules.testing.refcoco import write

    return write(tmp_path_factory.mktemp("refer"))["root"]


def predict(checkpoint: Path, work: Path, image: Path | None = None, extra=()) -> list[str]:
    return ["predict", "--checkpoint", str(checkpoint), "--image", str(image or work / "image.png"), "--out",
            str(work / "out"), "--prompt", "the square", *extra]


# -- images ---------------------------------------------------------------------------------------
IMAGES = damaged(image_bytes("PNG"), "png") + damaged(image_bytes("JPEG"), "jpeg") + [("empty", b"")]


@pytest.mark.parametrize("name, content", IMAGES, ids=[n for n, _ in IMAGES])
def test_garbage_image(release, work, capsys, name, content):
    bad = work / f"{name}.png"
    bad.write_bytes(content)
    assert_refused(capsys, predict(release, work, image=bad), work, bad)


# -- release folder: config.json and model.safetensors --------------------------------------------
TINY = {"architectures": ["EvfSamModel"], "mm_extractor_scale": "tiny", "sam_scale": "tiny"}
WRONG_VALUES = [7, 1.5, True, "nope", {"a": 1}, [["EvfSamModel"]], [7]]
CONFIGS = damaged(json.dumps(TINY).encode(), "json") + [
    (f"{key}={json.dumps(value)}", json.dumps({**TINY, key: value}).encode())
    for key in TINY for value in WRONG_VALUES + ([] if key == "architectures" else [None])  # null: the default class
] + [(f"top-level-{json.dumps(v)}", json.dumps(v).encode()) for v in ([TINY], "EvfSamModel", 3, None)]


@pytest.mark.parametrize("name, content", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_garbage_release_config(release, work, capsys, name, content):
    folder = shutil.copytree(release, work / "release")
    (folder / "config.json").write_bytes(content)
    assert_refused(capsys, predict(folder, work), work, folder / "config.json")


def safetensors_with_header(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


WEIGHTS = [
    ("random", random_bytes(500)),
    ("header-longer-than-file", (10**6).to_bytes(8, "little") + b"{}"),
    ("header-list", safetensors_with_header([1, 2])),
    ("entry-not-object", safetensors_with_header({"w": 5})),
    ("unknown-dtype", safetensors_with_header({"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))),
    ("offsets-past-end", safetensors_with_header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(4))),
    ("shape-not-list", safetensors_with_header({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, bytes(16))),
]


@pytest.mark.parametrize("name, content", WEIGHTS, ids=[n for n, _ in WEIGHTS])
def test_garbage_release_weights(release, work, capsys, name, content):
    folder = shutil.copytree(release, work / "release")
    (folder / "model.safetensors").write_bytes(content)
    assert_refused(capsys, predict(folder, work), work, folder / "model.safetensors")


def test_cut_release_weights(release, work, capsys):
    folder = shutil.copytree(release, work / "release")
    weights = (folder / "model.safetensors").read_bytes()
    for cut in (4, 100, len(weights) // 2):
        (folder / "model.safetensors").write_bytes(weights[:cut])
        assert_refused(capsys, predict(folder, work), work, folder / "model.safetensors")


# -- experiment YAML ------------------------------------------------------------------------------
def yaml_cases(valid: str) -> list[tuple[str, bytes]]:
    before_data = valid.index("\ndata:")
    return [("random-100", random_bytes(100)), ("random-3000", random_bytes(3000)),
            ("cut-in-model", valid[: before_data // 2].encode()), ("cut-before-data", valid[:before_data].encode()),
            ("top-level-list", b"- 1\n- 2\n"), ("scalar", b"just words\n"), ("model-number", b"model: 5\n"),
            ("trainer-list", (valid[: valid.index("\ntrainer:")] + "\ntrainer: [1, 2]\n").encode()),
            ("tab-indent", b"model:\n\tlr: 1\n"), ("unclosed-quote", b"model: {lr: 'x\n")]


def test_garbage_experiment_yaml(fit_config, work, capsys):
    for name, content in yaml_cases(fit_config.read_text()):
        bad = work / f"{name}.yaml"
        bad.write_bytes(content)
        # max_steps: should a case ever be accepted, it fails in one quick step (and writes), not after 1000 epochs
        args = ["fit", "--config", str(bad), "--trainer.default_root_dir", str(work / "run"), "--trainer.max_steps", "1"]
        assert_refused(capsys, args, work, bad)


# -- RefCOCO refs pickle and instances.json (evf prepare --check) -----------------------------------
class OpensAFile:
    def __reduce__(self):
        return (open, ("/nonexistent/evf-fuzz-sentinel", "w"))


def refs_cases(valid: bytes) -> list[tuple[str, bytes]]:
    def p2(obj) -> bytes:
        return pickle.dumps(obj, protocol=2)

    ref = {"ref_id": 1, "image_id": 1, "ann_id": 1, "split": "val", "sentences": [{"sent": "the square", "sent_id": 1}]}
    return damaged(valid, "refs") + [
        ("dict", p2({"refs": [ref]})), ("ints", p2([1, 2, 3])), ("ref-without-ann_id", p2([{k: v for k, v in ref.items() if k != "ann_id"}])),
        ("sentences-string", p2([{**ref, "sentences": "the square"}])), ("sentence-number", p2([{**ref, "sentences": [5]}])),
        ("image_id-list", p2([{**ref, "image_id": [1]}])), ("holds-code", p2([OpensAFile()])),
    ]


def instances_cases(valid: bytes) -> list[tuple[str, bytes]]:
    data = json.loads(valid)
    image = data["images"][0]

    def with_(**changes) -> bytes:
        return json.dumps({**data, **changes}).encode()

    return damaged(valid, "instances") + [
        ("list", b"[]"), ("no-annotations", json.dumps({"images": data["images"]}).encode()), ("images-number", with_(images=5)),
        ("image-without-file_name", with_(images=[{k: v for k, v in image.items() if k != "file_name"}])),
        ("height-string", with_(images=[{**image, "height": "480"}])), ("annotations-ints", with_(annotations=[1, 2])),
        ("not-utf8", b'{"images": "caf\xe9"}'),
    ]


@pytest.mark.parametrize("which", ["refs(unc).p", "instances.json"])
def test_garbage_refcoco_files(refer_root, capsys, which):
    path = refer_root / "refcoco" / which
    valid = path.read_bytes()
    cases = refs_cases(valid) if which.endswith(".p") else instances_cases(valid)
    try:
        for _, content in cases:
            path.write_bytes(content)
            assert_refused(capsys, ["prepare", "refcoco", "--check", "--root", str(refer_root), "--no-progress"],
                           refer_root, path)
    finally:
        path.write_bytes(valid)


# -- checkpoints ----------------------------------------------------------------------------------
def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


CHECKPOINTS = damaged(torch_bytes({"state_dict": {"w": torch.zeros(64, 64)}}), "ckpt") + [
    ("zip-not-torch", zip_bytes({"notes.txt": b"hello"})), ("zip-bad-pickle", zip_bytes({"archive/data.pkl": random_bytes(64)})),
    ("a-list", torch_bytes([torch.zeros(2)])), ("no-state_dict", torch_bytes({"weights": {"w": torch.zeros(2)}})),
    ("state_dict-list", torch_bytes({"state_dict": [1, 2]})), ("holds-code", torch_bytes({"state_dict": {}, "x": OpensAFile()})),
]


@pytest.mark.parametrize("name, content", CHECKPOINTS, ids=[n for n, _ in CHECKPOINTS])
def test_garbage_checkpoint_to_predict(fit_config, work, capsys, name, content):
    bad = work / f"{name}.ckpt"
    bad.write_bytes(content)
    assert_refused(capsys, predict(bad, work, extra=["--config", str(fit_config)]), work, bad)


@pytest.mark.parametrize("name", ["ckpt-random-3000", "zip-bad-pickle", "state_dict-list", "holds-code"])
def test_garbage_checkpoint_to_validate(fit_config, work, capsys, name):
    bad = work / f"{name}.ckpt"
    bad.write_bytes(dict(CHECKPOINTS)[name])
    assert_refused(capsys, ["validate", "--config", str(fit_config), "--ckpt_path", str(bad),
                            "--trainer.default_root_dir", str(work / "run")], work, bad)
