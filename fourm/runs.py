"""The run store: one folder per run, keyed by a hash of its resolved config.

Layout of ``<root>/<run_id>/``::

    config.yaml    the resolved config (what the id hashes), for people
    config.json    the same config, for programs (``results collect`` reads it without a YAML parser)
    env.json       git SHA, versions, host, SLURM job
    log.jsonl      one JSON record per line (step, losses, events)
    tb/            TensorBoard event files of the logged numbers (:mod:`fourm.tracking`)
    metrics.json   final metrics (written atomically)
    DONE           written last, atomically: the run is complete and its metrics are final

A run folder without ``DONE`` is partial: readers count it but never treat it as a result.

The identity rule, for every kind of run: a top-level key starting with ``_`` is bookkeeping (where the run folder
lives, how a job runs it, whether to resume), not identity; :func:`identity` drops those keys and :func:`run_id`
hashes the rest.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import hashlib
import json
import os
import platform
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import yaml

from fourm.files import atomic_write_json, atomic_write_text  # noqa: F401  (re-exported: the run store's writes)

ID_LENGTH = 12
_TRACKERS: dict = {}  # run folder -> this process's open tracker (Run objects are cheap and made anew)


@atexit.register
def _close_trackers() -> None:
    for tracker in list(_TRACKERS.values()):
        tracker.close()
    _TRACKERS.clear()


def canonical_json(obj: Any) -> str:
    """Stable JSON used for hashing: sorted keys, no whitespace; tuples become lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def identity(config: dict) -> dict:
    """The part of a config that names its run: every top-level key not starting with ``_``."""
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


def run_id(config: dict) -> str:
    """Hash of a resolved config's :func:`identity`."""
    return hashlib.sha256(canonical_json(identity(config)).encode()).hexdigest()[:ID_LENGTH]


def write_config(path: str | os.PathLike, config: dict) -> None:
    """A run folder's ``config.yaml`` and ``config.json`` (atomic each; the JSON first, the YAML marks a run)."""
    path = Path(path)
    plain = json.loads(canonical_json(config))
    atomic_write_json(path / "config.json", plain)
    atomic_write_text(path / "config.yaml", yaml.safe_dump(plain, sort_keys=True))


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """What env.json records: code version, library versions, host, and SLURM job if any."""
    import torch

    env = {
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "host": socket.gethostname(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "pid": os.getpid(),
    }
    slurm = {k: v for k, v in os.environ.items() if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")}
    if slurm:
        env["slurm"] = slurm
    return env


class Run:
    """A run folder. Create with :func:`open_run`; writes are idempotent and atomic."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.id = self.path.name

    # --- state -------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (self.path / "DONE").exists()

    @property
    def config(self) -> dict:
        if (self.path / "config.json").exists():
            with open(self.path / "config.json") as f:
                return json.load(f)
        with open(self.path / "config.yaml") as f:
            return yaml.safe_load(f)

    @property
    def metrics(self) -> dict:
        with open(self.path / "metrics.json") as f:
            return json.load(f)

    def read_log(self) -> list[dict]:
        """Log records; a torn last line (a killed writer) is skipped, never raised."""
        p = self.path / "log.jsonl"
        if not p.exists():
            return []
        records = []
        for line in p.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    # --- writes ------------------------------------------------------------------------------------
    def write_env(self) -> None:
        atomic_write_json(self.path / "env.json", environment())

    def log(self, **record: Any) -> None:
        """Append one JSON line (flushed): step, losses, events; its numbers also go to the run's tracker."""
        record.setdefault("time", _dt.datetime.now(_dt.timezone.utc).isoformat())
        with open(self.path / "log.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
        tracker = self.tracker()
        if tracker is not None:
            tracker.log(record)

    def tracker(self):
        """This process's :class:`fourm.tracking.Tracker` of the run (from its config; None before config.yaml)."""
        key = str(self.path.resolve())
        if key not in _TRACKERS:
            if not (self.path / "config.yaml").exists():
                return None
            from fourm.tracking import Tracker, tracker_kind

            config = self.config
            _TRACKERS[key] = Tracker(self.path, tracker_kind(config), run_id=self.id, config=config)
        return _TRACKERS[key]

    def close_tracker(self) -> None:
        tracker = _TRACKERS.pop(str(self.path.resolve()), None)
        if tracker is not None:
            tracker.close()

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.path / "metrics.json", metrics)

    def mark_done(self) -> None:
        """Written last: a run is a result only once this exists."""
        if not (self.path / "metrics.json").exists():
            raise RuntimeError(f"{self.path}: write metrics.json before marking the run DONE")
        self.close_tracker()
        atomic_write_text(self.path / "DONE", _dt.datetime.now(_dt.timezone.utc).isoformat() + "\n")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, done={self.done})"


class RankRun(Run):
    """A run as a rank other than 0 of a distributed job sees it: it reads the folder; rank 0 does all the writing."""

    def write_env(self) -> None:
        return None

    def log(self, **record: Any) -> None:
        return None

    def write_metrics(self, metrics: dict) -> None:
        return None

    def mark_done(self) -> None:
        return None


def open_run(root: str | os.PathLike, config: dict) -> Run:
    """Create (or reopen) the folder of a config's run and write config.yaml and env.json.

    Reopening an existing run with a different config is refused (a hash collision or a hand-edited folder).
    """
    rid = run_id(config)
    run = Run(Path(root) / rid)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg_path = run.path / "config.yaml"
    if cfg_path.exists():
        existing = yaml.safe_load(cfg_path.read_text())
        if run_id(existing) != rid:
            raise RuntimeError(
                f"{cfg_path} holds a different config than the one hashed to {rid}; "
                "move the folder away rather than overwrite it"
            )
        if not (run.path / "config.json").exists():
            atomic_write_json(run.path / "config.json", json.loads(canonical_json(existing)))
    else:
        write_config(run.path, config)
    if not (run.path / "env.json").exists():
        run.write_env()
    elif not run.done:  # a resumed run keeps its first env.json; where it resumed goes to the log
        run.log(event="reopen", env=environment())
    return run


def find_run_paths(*roots: str | os.PathLike) -> list[str]:
    """The paths of :func:`find_runs`, as the strings ``str(Run(p).path)`` would be, sorted; no Path objects.

    A folder holding a ``config.yaml`` (a file, or a link to one) is a run and is not searched further (run folders do
    not nest); other folders are searched recursively; links to folders are not followed and unreadable folders are
    skipped, as with ``os.walk``. A child folder is tested with one ``stat`` of its ``config.yaml`` rather than a
    listing, which is what makes 10,000 runs cheap (so a folder that can be entered but not listed, mode ``--x``, still
    counts as a run when its config.yaml is there; ``os.walk`` skipped it).
    """
    found: list[str] = []
    for root in roots:
        top = os.fspath(root)
        base = str(Path(top))  # what Path makes of the root: joined below without a Path per run
        rels: list[str] = []
        _scan_runs(top, "", rels)
        for rel in rels:
            found.append(base if not rel else rel if base == "." else os.path.join(base, rel))
    found.sort()
    return found


def _scan_runs(top: str, rel: str, out: list[str]) -> None:
    """Append the run folders under ``top`` (itself included) to ``out``, relative to the root (``top`` is ``rel``)."""
    try:
        with os.scandir(top) as it:
            entries = list(it)
    except OSError:  # os.walk's default: a folder that cannot be listed is skipped
        return
    subdirs = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            if entry.name == "config.yaml":
                out.append(rel)
                return
            continue
        try:
            is_link = entry.is_symlink()
        except OSError:
            is_link = False
        if not is_link:
            subdirs.append(entry.name)
    prefix = os.path.join(top, "")  # top + "/" unless it ends with one: os.path.join(top, name) is prefix + name
    for name in subdirs:
        child = prefix + name
        child_rel = f"{rel}/{name}" if rel else name
        try:
            is_run = not stat.S_ISDIR(os.stat(child + "/config.yaml").st_mode)
        except OSError:
            is_run = False
        if is_run:
            out.append(child_rel)
        else:  # no config.yaml (or one that is a folder, a broken link, unreadable): list it as os.walk would
            _scan_runs(child, child_rel, out)


def find_runs(*roots: str | os.PathLike) -> list[Run]:
    """Every run folder (a folder with config.yaml) under the given roots, recursively, sorted by path."""
    return [Run(p) for p in find_run_paths(*roots)]
