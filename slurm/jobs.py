"""What sweep jobs run on a worker: ``pretrain(config, run_dir)`` and ``transfer(config, run_dir)``.

Both are called by :class:`slurm.submit.RunEntry` with the run folder's lock held, and resume from what is on disk
(the latest pretraining checkpoint, the transfer task's own checkpoint), never from pickled state. Each call records
``job_start`` (job id, pid, restart count) in the run's log.jsonl, so a run's history shows which job wrote what.
"""
from __future__ import annotations

import os
from pathlib import Path

from fourm.runs import Run, run_id


def _threads() -> None:
    # as many threads as SLURM gave us: the same count on every restart keeps CPU sums in the same order
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        torch.set_num_threads(int(cpus))


def _record_start(run_dir: Path, kind: str) -> None:
    from slurm.lock import current_job_id

    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        Run(run_dir).log(event="job_start", kind=kind, job_id=current_job_id(), pid=os.getpid(),
                         restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))


def _check_folder(config: dict, run_dir: Path) -> None:
    if run_id(config) != run_dir.name:
        raise ValueError(f"run_dir {run_dir} is not this config's run folder (its id is {run_id(config)}); "
                         "sweeps name run folders <root>/fourm.runs.run_id(config)")


def _remove_debris(run_dir: Path) -> list[str]:
    """Temp files/folders a killed writer left (atomic writes and checkpoints go through ``.NAME.*.tmp`` and
    ``checkpoints/.step-*`` before their rename). Only called with the run's lock held: no live writer owns them."""
    import shutil

    found = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    found += [p for p in (run_dir / "checkpoints").glob(".step-*") if p.is_dir()]
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return sorted(str(p.relative_to(run_dir)) for p in found)


def pretrain(config: dict, run_dir: str) -> dict:
    """Pretrain ``config`` in ``run_dir`` (resuming from its latest checkpoint); writes metrics.json and DONE."""
    from fourm.pretrain.loop import run_from_config

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    _threads()
    _record_start(run_dir, "pretrain")
    if Run(run_dir).done:
        return Run(run_dir).metrics
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        removed = _remove_debris(run_dir)
        if removed:
            Run(run_dir).log(event="removed_debris", paths=removed)
    return run_from_config(config, str(run_dir))


def transfer(config: dict, run_dir: str) -> dict:
    """Fine-tune and evaluate ``config`` (a resolved transfer config) in ``run_dir``; writes metrics.json and DONE."""
    from transfer.run import run_transfer

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    init = config["transfer"]["init"]
    if init != "random" and not Path(init).exists():
        raise FileNotFoundError(f"transfer.init {init} does not exist: its pretraining run has not finished "
                                "(a sweep submits this job afterok its pretraining job)")
    _threads()
    _record_start(run_dir, "transfer")
    removed = _remove_debris(run_dir)
    if removed:
        Run(run_dir).log(event="removed_debris", paths=removed)
    return run_transfer(config, runs_root=str(run_dir.parent)).metrics
