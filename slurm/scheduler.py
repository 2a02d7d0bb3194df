"""What SLURM says about jobs: the cluster's config, and each job's state (squeue first, then sacct).

squeue knows queued and running jobs at once; sacct knows finished ones (and lags squeue by a moment), so a job
is looked up in squeue first and in sacct only when squeue no longer lists it.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

# States in which a job may still write to its run folder (or will start to).
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
# States in which a job's process is alive right now (a lock it holds is not stale).
LIVE = frozenset({"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"})


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # SLURM's name: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, PREEMPTED, ..., or UNKNOWN
    reason: str = ""  # squeue's reason for PENDING (Dependency, BeginTime, Resources), or sacct's ExitCode

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _run(cmd: list[str], timeout: float = 30) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def show_config() -> dict[str, str]:
    """`scontrol show config` as a dict."""
    cfg = {}
    for line in _run(["scontrol", "show", "config"]).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip()] = value.strip()
    return cfg


def max_array_size() -> int:
    """Array tasks must have indices below this (SLURM's MaxArraySize, default 1001)."""
    return int(show_config().get("MaxArraySize", "1001"))


def _base_id(job_id: str) -> str:
    return job_id.split("_")[0].split(".")[0]


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """State of each job id (plain "123" or array task "123_4"); ids SLURM no longer knows map to UNKNOWN."""
    job_ids = [str(j) for j in job_ids]
    if not job_ids:
        return {}
    bases = sorted({_base_id(j) for j in job_ids})
    found: dict[str, JobState] = {}
    # squeue: -r lists each array task on its own line ("123_4") even while pending.
    out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r|%i"],
                         capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():  # squeue exits non-zero when every id is gone: not an error here
        jid, state, reason, _ = line.split("|", 3)
        found[jid] = JobState(jid, state, reason if reason not in ("None", "(null)") else "")
    missing = [j for j in job_ids if j not in found]
    if missing:
        out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(sorted({_base_id(j) for j in missing})),
                    "-o", "JobID,State,ExitCode"])
        for line in out.splitlines():
            jid, state, exit_code = line.split("|")
            if jid in found:
                continue
            state = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
            found[jid] = JobState(jid, state, f"exit {exit_code}" if exit_code != "0:0" else "")
    return {j: found.get(j, JobState(j, "UNKNOWN")) for j in job_ids}


def is_live(job_id: str) -> bool:
    """The job's process may be running right now (used to decide whether a run-folder lock is stale)."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", _base_id(job_id), "-o", "%i|%T"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return True  # cannot ask SLURM: assume the holder is alive rather than risk two writers
    return any(line.split("|")[0] == job_id and line.split("|")[1] in LIVE for line in out.stdout.splitlines())


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    nodes: int
    gpus_per_node: int | None  # the most GPUs (GRES gpu) a node of it has; None when it declares none


def partition_info(partition: str | None = None) -> PartitionInfo | None:
    """Nodes and GPUs per node of a partition (the default one when None) from ``sinfo``; None without a cluster."""
    cmd = ["sinfo", "-h", "-o", "%P|%D|%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2]
    if partition is None:
        rows = [r for r in rows if r[0].endswith("*")]  # sinfo marks the default partition with *
    if not rows:
        return None
    name = rows[0][0].rstrip("*")
    nodes = sum(int(r[1]) for r in rows if r[0].rstrip("*") == name)
    gpus = [_gres_gpus(r[2]) for r in rows if r[0].rstrip("*") == name]
    gpus = [g for g in gpus if g is not None]
    return PartitionInfo(name, nodes, max(gpus) if gpus else None)


def _gres_gpus(gres: str) -> int | None:
    """GPUs in a GRES string such as ``gpu:8``, ``gpu:a100:8(S:0-1)``; None when it lists none."""
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            return int(parts[-1])
    return None
