"""The sweep manifest: ``<sweep_dir>/manifest.json`` maps run id -> its run folder, entry, config and SLURM jobs.

Written atomically under an flock, so two `resubmit` calls on one sweep see each other's submissions.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from fourm.runs import atomic_write_json

VERSION = 1
NAME = "manifest.json"


def manifest_path(sweep_dir_or_manifest: str | os.PathLike) -> Path:
    p = Path(sweep_dir_or_manifest)
    return p / NAME if p.is_dir() or p.suffix != ".json" else p


def load(path: str | os.PathLike) -> dict:
    """Read a manifest; a missing or foreign file is one clear error."""
    path = manifest_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no sweep manifest here; pass a sweep folder made by slurm.submit.submit()")
    data = json.loads(path.read_text())
    if data.get("version") != VERSION or "runs" not in data:
        raise ValueError(f"{path}: not a version-{VERSION} sweep manifest (keys: {sorted(data)})")
    return data


def empty(sweep_dir: str | os.PathLike, launcher: str) -> dict:
    return {"version": VERSION, "launcher": launcher, "log_dir": str(Path(sweep_dir).resolve() / "logs"), "runs": {}}


def save(path: str | os.PathLike, data: dict) -> None:
    atomic_write_json(manifest_path(path), data)


@contextlib.contextmanager
def locked(sweep_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the sweep's manifest lock (one submitter at a time)."""
    path = Path(sweep_dir) / ".manifest.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def latest_job(entry: dict) -> dict | None:
    """The run's most recent submission, or None if it was never submitted."""
    return entry["jobs"][-1] if entry.get("jobs") else None
