"""evf.locks: one holder at a time, the holder named in one line, gone holders' locks broken."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from evf.locks import STALE_AFTER_S, FolderLock, LockError, is_rank_zero, process_start
from tests.lock_helpers import dead_pid, hold_lock, kill


def write_lock(path, age_s: float = 0.0, **holder) -> dict:
    holder = {"pid": 1, "host": socket.gethostname(), "start": None, "command": "evf fit", "since": "then",
              "token": "theirs", "slurm_job": None, "slurm_restart": "0", **holder}
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return holder


def test_a_live_holder_is_named_and_its_lock_kept(tmp_path):
    lock_file = tmp_path / ".evf.lock"
    holder = hold_lock(lock_file)
    try:
        before = lock_file.read_bytes()
        with pytest.raises(LockError) as info:
            FolderLock(lock_file, "run folder r").acquire()
        message = str(info.value)
        assert "\n" not in message and message.startswith("run folder r is in use by ")
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and str(lock_file) in message
        assert lock_file.read_bytes() == before
    finally:
        kill(holder)
    with FolderLock(lock_file, "run folder r") as lock:  # its holder is gone now: broken and taken over
        assert json.loads(lock_file.read_text())["pid"] == os.getpid() == lock.info["pid"]
    assert not lock_file.exists()


@pytest.mark.parametrize("case", ["dead pid", "reused pid", "old heartbeat elsewhere", "requeued slurm job", "damaged"])
def test_a_gone_holder_is_detected(tmp_path, monkeypatch, case):
    lock_file = tmp_path / "lock"
    if case == "dead pid":
        write_lock(lock_file, pid=dead_pid())
    elif case == "reused pid":  # a running pid (ours) that started at another time than the holder did
        write_lock(lock_file, pid=os.getpid(), start="1")
    elif case == "old heartbeat elsewhere":
        write_lock(lock_file, host="node-elsewhere", pid=os.getpid(), age_s=STALE_AFTER_S + 60)
    elif case == "requeued slurm job":
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        write_lock(lock_file, host="node-elsewhere", slurm_job="77", slurm_restart="0")
    else:
        lock_file.write_text('{"pid": ')
        os.utime(lock_file, (time.time() - 60, time.time() - 60))
    with FolderLock(lock_file, "x"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()


@pytest.mark.parametrize("holder", [
    {"host": "node-elsewhere"},  # fresh heartbeat on another host: may be running
    {"host": "node-elsewhere", "slurm_job": "77", "slurm_restart": "1"},  # the same incarnation of the job
])
def test_a_fresh_lock_of_another_host_is_respected(tmp_path, monkeypatch, holder):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock_file = tmp_path / "lock"
    write_lock(lock_file, age_s=STALE_AFTER_S - 60, **holder)
    with pytest.raises(LockError, match="in use by pid 1 on host node-elsewhere"):
        FolderLock(lock_file, "x").acquire()
    assert json.loads(lock_file.read_text())["token"] == "theirs"


def test_our_own_pid_with_our_start_time_is_alive(tmp_path):
    lock_file = tmp_path / "lock"
    write_lock(lock_file, pid=os.getpid(), start=process_start(os.getpid()))
    with pytest.raises(LockError, match=f"pid {os.getpid()}"):
        FolderLock(lock_file, "x").acquire()


def test_breaking_a_stale_lock_never_removes_one_taken_meanwhile(tmp_path):
    lock_file = tmp_path / "lock"
    stale = write_lock(lock_file, pid=dead_pid())
    write_lock(lock_file, token="fresh")  # another process broke the stale lock and took it just now
    FolderLock(lock_file, "x").break_stale(stale)
    assert json.loads(lock_file.read_text())["token"] == "fresh"
    assert [p.name for p in tmp_path.iterdir()] == ["lock"]


def test_release_and_heartbeat_touch_only_our_own_lock(tmp_path):
    lock_file = tmp_path / "lock"
    lock = FolderLock(lock_file, "x").acquire()
    os.utime(lock_file, (1, 1))
    lock.beat()
    assert lock_file.stat().st_mtime > 1
    write_lock(lock_file, token="someone else's")  # ours was judged gone and taken over
    lock.release()
    assert json.loads(lock_file.read_text())["token"] == "someone else's"


def test_only_the_first_process_of_a_launch_is_rank_zero(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_rank_zero()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert is_rank_zero()
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's launcher on the second node
    assert not is_rank_zero()
