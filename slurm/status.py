"""State of every run of a sweep: the run folders first (DONE is final), SLURM (or local processes) second.

    fourm-bench status SWEEP_DIR_OR_MANIFEST [--tail N] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from fourm.configs import parse_cli
from slurm import manifest as mf
from slurm.submit import make_launcher

# SLURM state -> what a reader of the table needs to know
_SHOWN = {
    "CONFIGURING": "RUNNING", "COMPLETING": "RUNNING", "SIGNALING": "RUNNING", "STAGE_OUT": "RUNNING",
    "REQUEUE_HOLD": "REQUEUED", "REQUEUE_FED": "REQUEUED",
    "NODE_FAIL": "FAILED", "BOOT_FAIL": "FAILED", "OUT_OF_MEMORY": "FAILED", "DEADLINE": "TIMEOUT",
}
_WITH_TAIL = {"FAILED", "CANCELLED", "TIMEOUT", "INCOMPLETE", "PREEMPTED"}


@dataclass
class StatusRow:
    run_id: str
    run_dir: str
    state: str  # DONE, PENDING, RUNNING, REQUEUED, PREEMPTED, FAILED, CANCELLED, TIMEOUT, INCOMPLETE, NOT_SUBMITTED, UNKNOWN
    job_id: str | None = None
    detail: str = ""  # SLURM's reason or exit code
    log_tail: str = ""
    active: bool = False  # a job is queued or running for this run


@dataclass
class StatusTable:
    rows: list[StatusRow]

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.state for r in self.rows).items()))

    def by_run(self) -> dict[str, StatusRow]:
        return {r.run_id: r for r in self.rows}

    def format(self) -> str:
        if not self.rows:
            return "(no runs)"
        cols = [("run", [r.run_id for r in self.rows]), ("state", [r.state for r in self.rows]),
                ("job", [r.job_id or "-" for r in self.rows]), ("detail", [r.detail for r in self.rows])]
        widths = [max(len(h), *map(len, vals)) for h, vals in cols]
        lines = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip()]
        for i in range(len(self.rows)):
            lines.append("  ".join(vals[i].ljust(w) for (_, vals), w in zip(cols, widths)).rstrip())
        for r in self.rows:
            if r.log_tail:
                lines += ["", f"--- {r.run_id} {r.state} (job {r.job_id}): last lines of its log ---", r.log_tail]
        lines += ["", "counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + f" (total {len(self.rows)})"]
        return "\n".join(lines)


def log_files(log_dir: str | os.PathLike, job_id: str) -> list[Path]:
    """submitit's stderr and stdout files of a job (task 0)."""
    folder = Path(log_dir) / job_id
    return [folder / f"{job_id}_0_log.err", folder / f"{job_id}_0_log.out"]


def log_tail(log_dir: str | os.PathLike, job_id: str, lines: int = 15) -> str:
    """The last lines of the job's stderr, then of its stdout (whichever exist and are not empty)."""
    parts = []
    for path in log_files(log_dir, job_id):
        if path.exists():
            text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
            if text:
                parts.append(f"[{path.name}]\n" + "\n".join(text))
    return "\n".join(parts)


def status(sweep_dir_or_manifest: str | os.PathLike, tail_lines: int = 15) -> StatusTable:
    """One row per run of the sweep, in run-id order."""
    data = mf.load(sweep_dir_or_manifest)
    runs = data["runs"]
    latest = {rid: mf.latest_job(e) for rid, e in runs.items()}
    pending_ids = [j["job_id"] for rid, j in latest.items()
                   if j and not (Path(runs[rid]["run_dir"]) / "DONE").exists()]
    states = make_launcher(data["launcher"], data["log_dir"]).states(pending_ids) if pending_ids else {}
    rows = []
    for rid in sorted(runs):
        entry, job = runs[rid], latest[rid]
        row = StatusRow(rid, entry["run_dir"], "NOT_SUBMITTED", job["job_id"] if job else None)
        if (Path(entry["run_dir"]) / "DONE").exists():
            row.state = "DONE"
        elif job:
            js = states[job["job_id"]]
            row.active, row.detail = js.active, js.reason
            row.state = _SHOWN.get(js.state, js.state)
            if js.state == "PENDING" and js.reason == "BeginTime":
                row.state = "REQUEUED"  # a requeued job waits for its BeginTime before it runs again
            elif js.state == "COMPLETED":
                row.state, row.detail = "INCOMPLETE", "job ended without the run writing DONE"
            if row.state in _WITH_TAIL:
                row.log_tail = log_tail(data["log_dir"], job["job_id"], tail_lines)
        rows.append(row)
    return StatusTable(rows)


def _jobs_still_running(sweep_dir_or_manifest) -> bool:
    """Whether a run's latest job is still queued or running although its run wrote DONE.

    A job writes DONE just before its process exits; SLURM reports it RUNNING (then COMPLETING) until then, and a
    caller that waits for the sweep expects its jobs to have ended, e.g. to read their accounting."""
    data = mf.load(sweep_dir_or_manifest)
    ids = [j["job_id"] for j in map(mf.latest_job, data["runs"].values()) if j]
    if not ids:
        return False
    return any(s.active for s in make_launcher(data["launcher"], data["log_dir"]).states(ids).values())


def wait(sweep_dir_or_manifest: str | os.PathLike, poll_s: float = 2.0, timeout_s: float | None = None) -> dict:
    """Block (with a progress bar) until no run of the sweep has an active job; returns the final states by run."""
    t0 = time.monotonic()
    with tqdm(desc="waiting for jobs", unit="run") as bar:
        while True:
            table = status(sweep_dir_or_manifest)
            active = [r for r in table.rows if r.active]
            bar.total = len(table.rows)
            bar.n = len(table.rows) - len(active)
            bar.refresh()
            if not active and not _jobs_still_running(sweep_dir_or_manifest):
                return {r.run_id: r.state for r in table.rows}
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{len(active)} runs still active after {timeout_s:.0f} s: "
                                   + ", ".join(f"{r.run_id}={r.state}" for r in active))
            time.sleep(poll_s)


def cli(argv: list[str]) -> int:
    """`fourm-bench status SWEEP_DIR_OR_MANIFEST`: a table of runs, their jobs and states, then counts."""
    p = argparse.ArgumentParser(prog="fourm-bench status", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="a sweep folder (holding manifest.json) or the manifest itself")
    p.add_argument("--tail", type=int, default=15, help="log lines shown for failed runs (default 15)")
    p.add_argument("--json", action="store_true", help="print rows and counts as JSON")
    args = parse_cli(p, argv)
    try:
        table = status(args.sweep, args.tail)
    except (FileNotFoundError, ValueError) as e:
        print(f"fourm-bench status: {e}")
        return 2
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in table.rows], "counts": table.counts}, indent=2))
    else:
        print(table.format())
    return 0
