"""Atomic outputs: a killed writer never leaves a corrupt file under the final name.

1. A subprocess writes a large file through ``evf.io.atomic_path`` and is SIGKILLed mid-write:
   the previous file is intact and nothing else carries the final name.
2. Lightning's checkpoint writer serialises fully in memory before touching the file.
3. Files and folders come out with the modes the umask gives, like a plain ``open``/``mkdir``.
Non-atomic ``torch.save``/``numpy.save``/``mkstemp`` in the package are lint errors (pyproject.toml, TID251;
tests/test_safe_loading.py checks the rules fire).
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from evf.io import atomic_path, save_png_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from evf.io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"N" * (1 << 20))
            f.flush()
            print("started", flush=True)
            for _ in range(600):  # ~60 s of slow writing: the parent kills us long before
                f.write(b"N" * (1 << 16))
                f.flush()
                time.sleep(0.1)
    print("finished", flush=True)
""")


def test_sigkill_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "cache.bin"
    target.write_bytes(b"previous complete version")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "started"
        temps = list(tmp_path.glob(".cache.bin.*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size >= 1 << 20  # the writer really is mid-way
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"previous complete version"
    # what the kill left is only the hidden temporary, never something under the final name
    assert {p.name for p in tmp_path.iterdir()} - {"cache.bin"} == {temps[0].name}


def test_sigkill_without_old_file_leaves_no_final_file(tmp_path):
    target = tmp_path / "table.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not target.exists()


def test_exception_mid_write_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, '{"cIoU": 0.5}')
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"cIoU": 0.')
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{"cIoU": 0.5}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_png_helper_replaces_atomically(tmp_path):
    import numpy as np
    from PIL import Image

    target = tmp_path / "mask.png"
    save_png_atomic(target, np.zeros((4, 5), np.uint8))
    save_png_atomic(target, np.full((4, 5), 255, np.uint8))
    with Image.open(target) as im:
        assert np.array(im).min() == 255
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_lightning_checkpoint_save_failure_keeps_old_checkpoint(tmp_path):
    """Lightning serialises the whole checkpoint into memory before opening the file, so a failure
    while serialising never truncates the previous checkpoint (the final move is a rename when the
    temp dir and the checkpoint dir share a filesystem; see docs/errors.md)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    target = tmp_path / "last.ckpt"
    io = TorchCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}, target)  # unpicklable
    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


# -- source scan --------------------------------------------------------------------------------
def test_atomic_dir_replaces_a_folder_only_when_the_block_finishes(tmp_path):
    from evf.io import atomic_dir

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "old.txt").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible under the final name until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]


# -- modes: what a plain open()/mkdir would give under the umask (issue 14: mkstemp made outputs 0600) --------
@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_files_and_folders_get_the_modes_of_a_plain_open_and_mkdir(tmp_path, umask):
    import numpy as np

    from evf.io import atomic_dir

    with open(tmp_path / "plain.txt", "w") as f:  # the reference: what every other program's files get
        f.write("x")
    (tmp_path / "plain-dir").mkdir()
    assert mode(tmp_path / "plain.txt") == 0o666 & ~umask and mode(tmp_path / "plain-dir") == 0o777 & ~umask
    write_text_atomic(tmp_path / "metrics.json", "{}")
    save_png_atomic(tmp_path / "mask.png", np.zeros((2, 3), np.uint8))
    with atomic_path(tmp_path / "weights.bin") as tmp:
        assert mode(tmp) == 0o666 & ~umask  # already while written
        tmp.write_bytes(b"w")
    with atomic_dir(tmp_path / "cache") as tmp:
        (tmp / "shard").write_bytes(b"s")
    for name in ("metrics.json", "mask.png", "weights.bin", "cache/shard"):
        assert mode(tmp_path / name) == mode(tmp_path / "plain.txt"), name
    assert mode(tmp_path / "cache") == mode(tmp_path / "plain-dir")
