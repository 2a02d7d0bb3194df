"""The local launcher (no SLURM): same manifest, dependencies, status and resubmit semantics; and the run lock."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fourm.runs import Run, run_id
from regression_job import train
from slurm.lock import RunLock
from slurm.status import cli as status_cli
from slurm.status import status
from slurm.submit import Job, Resources, resubmit, submit

ENTRY = f"{Path(__file__).resolve().parent / 'regression_job.py'}:train"  # a job of the tests, by file


def job_for(root, config, **kw):
    return Job(str(root / "runs" / run_id(config)), config, ENTRY, **kw)


@pytest.mark.slow  # six local worker processes, each importing torch
def test_local_sweep_dependencies_failures_and_resubmit(tmp_path, capsys):
    ok = {"seed": 0, "steps": 10}
    bad = {"seed": 1, "steps": 10, "fail_at_step": 3}
    child_ok = {"seed": 2, "steps": 5, "init_from": str(tmp_path / "runs" / run_id(ok))}
    child_bad = {"seed": 3, "steps": 5, "init_from": str(tmp_path / "runs" / run_id(bad))}
    jobs = [job_for(tmp_path, ok), job_for(tmp_path, bad),
            job_for(tmp_path, child_ok, after=(run_id(ok),)), job_for(tmp_path, child_bad, after=(run_id(bad),))]
    sweep = tmp_path / "sweep"
    submitted = submit(sweep, jobs, Resources(timeout_min=15, array_parallelism=2), launcher="local")
    assert sorted(submitted) == sorted(j.run_id for j in jobs)

    rows = status(sweep).by_run()
    assert rows[run_id(ok)].state == "DONE" and rows[run_id(child_ok)].state == "DONE"
    assert rows[run_id(bad)].state == "FAILED"
    assert "fail_at_step=3" in rows[run_id(bad)].log_tail  # the worker's traceback
    assert rows[run_id(child_bad)].state == "CANCELLED"  # never started: its parent failed
    assert not (tmp_path / "runs" / run_id(child_bad)).joinpath("log.jsonl").exists()
    assert status(sweep).counts == {"CANCELLED": 1, "DONE": 2, "FAILED": 1}
    assert Run(tmp_path / "runs" / run_id(ok)).metrics == train(ok, str(tmp_path / "ref" / run_id(ok)))

    assert status_cli([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "counts: CANCELLED 1, DONE 2, FAILED 1 (total 4)" in out and "fail_at_step=3" in out

    # resubmit retries only the failed run and its cancelled child (which fail again: the config asks for it)
    assert resubmit(sweep) == sorted([run_id(bad), run_id(child_bad)])
    manifest = json.loads((sweep / "manifest.json").read_text())["runs"]
    assert len(manifest[run_id(ok)]["jobs"]) == 1 and len(manifest[run_id(bad)]["jobs"]) == 2


def test_status_cli_names_a_missing_manifest(tmp_path, capsys):
    assert status_cli([str(tmp_path)]) == 2
    assert "no sweep manifest" in capsys.readouterr().out


def test_timeout_below_15_min_is_refused():
    with pytest.raises(ValueError, match="timeout_min=10"):
        Resources(timeout_min=10)


def test_lock_excludes_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"job_id": f"local-{holder.pid}", "host": socket.gethostname(),
                                                    "pid": holder.pid, "time": 0}))
        with RunLock(tmp_path) as lock:
            assert not lock.acquired and lock.holder["pid"] == holder.pid
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid  # not removed by the loser
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # the holder is dead: its lock is stale
        assert lock.acquired
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with RunLock(tmp_path, job_id="other") as second:
            assert not second.acquired  # this process is alive and holds it
    assert not (tmp_path / ".lock").exists()


def test_lock_of_the_same_job_restarted_is_taken_over(tmp_path):
    # SLURM runs one job id once at a time: a lock naming our own job was left by our previous incarnation
    (tmp_path / ".lock").write_text(json.dumps({"job_id": "77_3", "host": "elsewhere", "pid": 1, "time": 0}))
    with RunLock(tmp_path, job_id="77_3") as lock:
        assert lock.acquired


# a local launch of one slow job, in a process of its own (the test SIGKILLs it)
LAUNCH = """
import sys
from slurm.submit import Job, Resources, submit
from fourm.runs import run_id
root, entry, cfg = sys.argv[1], sys.argv[2], {"seed": 7, "steps": 400, "step_sleep_s": 0.05, "checkpoint_every": 5}
submit(root + "/sweep", [Job(root + "/runs/" + run_id(cfg), cfg, entry)],
       Resources(timeout_min=15), launcher="local")
"""


@pytest.mark.slow
def test_jobs_of_a_killed_local_launcher_stop_and_a_rerun_resumes_them(tmp_path):
    """SIGKILL gives the launcher no chance to clean up: its job ends by itself, and a resubmission finishes it."""
    import signal
    import time

    from slurm.status import status as sweep_status

    cfg = {"seed": 7, "steps": 400, "step_sleep_s": 0.05, "checkpoint_every": 5}
    run_dir = tmp_path / "runs" / run_id(cfg)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(tmp_path), ENTRY], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (run_dir / "checkpoint.pt").exists():
        time.sleep(0.2)
    assert (run_dir / "checkpoint.pt").exists(), "the job never checkpointed"
    job_id = json.loads((tmp_path / "sweep" / "manifest.json").read_text())["runs"][run_id(cfg)]["jobs"][-1]["job_id"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    log = run_dir / "log.jsonl"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and sweep_status(tmp_path / "sweep").by_run()[run_id(cfg)].state == "RUNNING":
        time.sleep(0.2)
    assert sweep_status(tmp_path / "sweep").by_run()[run_id(cfg)].state == "FAILED", f"job {job_id} outlived its launcher"
    size = log.stat().st_size
    time.sleep(1.0)
    assert log.stat().st_size == size and not Run(run_dir).done  # nothing writes to the run any more
    assert resubmit(tmp_path / "sweep") == [run_id(cfg)]
    assert Run(run_dir).metrics == train(cfg, str(tmp_path / "ref" / run_id(cfg)))  # resumed to the same result
