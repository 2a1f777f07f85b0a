"""One writer per folder: embedding caches, run folders and sweep folders are locked while written.

A lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFS):
``{pid, host, start, command, since, token, slurm_job, slurm_restart}``. Its holder refreshes the file's
modification time every ``HEARTBEAT_S`` seconds from a daemon thread and removes the file when done.
A process that finds a lock decides whether its holder is gone:

* same host: gone if the pid is not running, or now runs another program (its start time differs);
* another host: gone if the heartbeat is older than ``STALE_AFTER_S``;
* same SLURM job with another restart count: the job was requeued, the holder is its earlier incarnation.

A gone holder's lock is broken and taken over (so ``--ckpt_path last`` resumes after a crash);
a live holder's lock stops the process with one line naming the holder and the lock file.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Self

from evf.errors import UserError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats: a holder on another host is taken to be gone
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


class LockError(UserError):
    """The folder is being written by another live process; the message names it and the lock file."""


def is_rank_zero() -> bool:
    """False in every process but the first of a multi-process launch (torchrun, SLURM, Lightning's
    launcher): only that one takes a run folder's lock, the others write under its protection."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), telling a reused pid apart; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return None if fields[0] == "Z" else fields[19]  # a zombie has ended: only its exit status is left


def pid_running(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    if Path("/proc").is_dir():
        now = process_start(pid)
        return now is not None and (start is None or now == start)
    return True


def command_line() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "evf" if program in ("evf", "cli.py", "__main__.py") else program  # `python -m evf.cli` runs cli.py
    return " ".join([program, *sys.argv[1:]])[:160]


def holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()), "command": command_line(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex,
            "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0")}


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')} ({holder.get('command', '?')}, since {holder.get('since', '?')})"


def stale_reason(holder: dict, age_s: float) -> str | None:
    """Why the holder of a lock is gone, or None while it may still be writing."""
    me = holder_info()
    if holder.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"] and holder.get("slurm_restart") != me["slurm_restart"]:
        return f"SLURM job {me['slurm_job']} was requeued"
    if holder.get("host") == me["host"]:
        pid = holder.get("pid")
        if not isinstance(pid, int) or not pid_running(pid, holder.get("start")):
            return f"pid {pid} is not running on this host"
        return None
    if age_s > STALE_AFTER_S:
        return f"its heartbeat is {age_s:.0f} s old (limit {STALE_AFTER_S:.0f} s)"
    return None


class FolderLock:
    """``with FolderLock(lock_file, "run folder runs/x"):`` — exclusive while the block runs."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self.info: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_holder(self) -> tuple[dict, float] | None:
        """(holder, heartbeat age in seconds), or None if there is no lock file."""
        try:
            text, mtime = self.path.read_text(encoding="utf-8"), self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            holder = holder if isinstance(holder, dict) else {}
        except ValueError:  # being written right now, or damaged: judged by its age alone
            holder = {}
        return holder, time.time() - mtime

    def try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.info) + "\n")
        return True

    def acquire(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.info = holder_info()
        for _ in range(50):  # loops only while another process writes, breaks or releases the lock file
            if self.try_create():
                self._thread = threading.Thread(target=self._heartbeat, name=f"lock {self.path}", daemon=True)
                self._thread.start()
                atexit.register(self.release)
                return self
            found = self.read_holder()
            if found is None:
                continue  # released between our attempt and the read
            holder, age = found
            if not holder and age < HEARTBEAT_S:
                time.sleep(0.1)  # a lock file being written: read it again
                continue
            reason = stale_reason(holder, age) if holder else "the lock file is unreadable"
            if reason is None:
                raise LockError(f"{self.what} is in use by {describe(holder)}; wait for it to finish, "
                                f"or remove {self.path} if that process is gone")
            self.break_stale(holder)
        raise LockError(f"cannot lock {self.what}: its lock file {self.path} is being written or is damaged; "
                        "remove it if no evf process uses the folder")

    def break_stale(self, holder: dict) -> None:
        """Remove a gone holder's lock, but never a lock another process has just taken in its place."""
        aside = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            taken = json.loads(aside.read_text(encoding="utf-8"))
        except ValueError:
            taken = {}
        if taken.get("token") != holder.get("token"):  # a lock taken meanwhile was renamed: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def beat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:  # broken by someone who judged us gone; nothing to refresh
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.beat()

    def release(self) -> None:
        if self.info is None or self.info["pid"] != os.getpid():  # a forked child (dataloader worker) holds nothing
            return
        self._stop.set()
        atexit.unregister(self.release)
        found = self.read_holder()
        if found is not None and found[0].get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
        self.info = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_dir_lock(run_dir: str | os.PathLike) -> FolderLock:
    """The lock of a run (or sweep) folder: ``<folder>/.evf.lock``."""
    return FolderLock(Path(run_dir) / ".evf.lock", f"run folder {run_dir}")


def sibling_lock(folder: str | os.PathLike, what: str) -> FolderLock:
    """The lock of a folder that is replaced as a whole (an embedding cache): ``.<name>.lock`` beside it."""
    folder = Path(folder)
    return FolderLock(folder.parent / f".{folder.name}.lock", f"{what} {folder}")
