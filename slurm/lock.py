"""An exclusive lock in a run folder, so that two jobs never write one run.

The lock file is created with O_CREAT|O_EXCL and holds who took it: job id, host, pid. A lock is stale when its
holder cannot be running any more: same host and the pid is gone, or its SLURM job is no longer running, or it
names the very job that is asking (SLURM restarted that job: one job id never runs twice at once).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from slurm import scheduler

LOCK_NAME = ".lock"
BREAK_TIMEOUT_S = 60  # a breaker file older than this was left by a crash in the few lines that hold it


def current_job_id() -> str:
    """This process's job: "ARRAY_TASK" or "JOB" under SLURM, "local-<pid>" elsewhere."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (ended, not yet reaped: its launcher was killed and no init reaps orphans) holds nothing
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_alive(holder: dict, me: str) -> bool:
    """Whether the holder recorded in a lock may still be writing."""
    job = str(holder.get("job_id", ""))
    if job == me:
        return False
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return False
    if job.startswith("local-"):
        return holder.get("host") != socket.gethostname() or _pid_alive(int(holder.get("pid", -1)))
    return scheduler.is_live(job)


class RunLock:
    """``with RunLock(run_dir) as lock: if lock.acquired: ...`` — held for the body, released after."""

    def __init__(self, run_dir: str | os.PathLike, job_id: str | None = None):
        self.path = Path(run_dir) / LOCK_NAME
        self.job_id = job_id or current_job_id()
        self.record = {"job_id": self.job_id, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.acquired = False
        self.holder: dict | None = None  # who holds it when we could not take it

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def read(self) -> dict | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:  # caught between create and write, or the creator died right there
            age = time.time() - self.path.stat().st_mtime
            return {"job_id": "?", "host": "?", "pid": -1, "torn": True, "age": age}

    def acquire(self) -> bool:
        """Take the lock (breaking a stale one); False when a live job holds it (then ``holder`` says who)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self.acquired = True
                return True
            holder = self.read()
            if holder is None:
                continue  # released between our two calls
            if (holder["age"] < BREAK_TIMEOUT_S) if holder.get("torn") else holder_alive(holder, self.job_id):
                self.holder = holder
                return False
            self._break(holder)
            time.sleep(0.1)
        self.holder = self.read()
        return False

    def _break(self, stale: dict) -> None:
        """Remove a stale lock, unless someone replaced it meanwhile. Only one breaker at a time."""
        breaker = self.path.with_name(LOCK_NAME + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > BREAK_TIMEOUT_S:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return
        os.close(fd)
        try:
            if self.read() == stale:  # still the lock we judged stale, not a fresh one
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def release(self) -> None:
        if self.acquired and self.read() == self.record:
            self.path.unlink(missing_ok=True)
        self.acquired = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
