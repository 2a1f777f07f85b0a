"""Processes that hold a lock, and a datamodule that pauses an ``evf cache`` build at a known image."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from datamodules import SyntheticRefDataModule
from tests.training_helpers import REPO, subprocess_env

HOLDER = ("import sys, time\nfrom evf.locks import FolderLock\n"
          "FolderLock(sys.argv[1], 'test').acquire()\nprint('held', flush=True)\ntime.sleep(600)\n")


def hold_lock(lock_file: Path) -> subprocess.Popen:
    """A live process holding ``lock_file`` (until the caller kills it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


class Forked:
    """``target(*args)`` in a child forked from this process: a separate process to SIGKILL that starts at once
    (a fresh interpreter spends ~5 s of CPU importing torch). ``pid``, ``poll``, ``send_signal``, ``wait`` and
    ``returncode`` behave as ``subprocess.Popen``'s (a signal's death is ``-signum``)."""

    def __init__(self, target, *args):
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never return into pytest
            code = 1
            try:
                target(*args)
                code = 0
            except BaseException:  # noqa: BLE001  (whatever fails, the child reports it and exits non-zero)
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode


def kill(process: subprocess.Popen | Forked) -> None:
    """SIGKILL, as a crash or the OOM killer would: no cleanup runs, the lock file stays behind."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class PausingSyntheticDataModule(SyntheticRefDataModule):
    """Synthetic data whose ``cache_images`` walk stops before image ``pause_at``: it writes ``marker`` (its
    pid) and waits until ``resume`` exists (forever without ``resume``). Without ``marker`` it never pauses."""

    def __init__(self, pause_at: int = 0, marker: str = "", resume: str = "", train_size: int = 4, val_size: int = 2,
                 test_size: int = 2, seed: int = 0, image_size: int = 48, batch_size: int = 2,
                 embedding_cache: str | None = None):
        super().__init__(train_size, val_size, test_size, seed, image_size, batch_size, embedding_cache=embedding_cache)
        self.pause_at, self.marker, self.resume = pause_at, marker, resume

    def cache_images(self, split: str):
        dataset = self.raw_dataset(split)
        return self.pausing(dataset) if self.marker else dataset

    def pausing(self, dataset):
        for k in range(len(dataset)):
            if k == self.pause_at:
                Path(self.marker).write_text(str(os.getpid()))
                while not (self.resume and Path(self.resume).exists()):
                    time.sleep(0.05)
            yield dataset[k]


def cache_config(path: Path, seed: int, **pause) -> Path:
    """The quickstart model (seeded, so every process builds the same SAM) on 4 tiny synthetic images."""
    sizes = {"train_size": 4, "val_size": 2, "test_size": 2, "batch_size": 2, "image_size": 48}  # over quickstart
    args = ", ".join(f"{k}: {v}" for k, v in {"seed": seed, **sizes, **pause}.items())
    path.write_text("data:\n  class_path: tests.lock_helpers.PausingSyntheticDataModule\n"
                    f"  init_args: {{{args}}}\n")
    return path
