"""Jobs on the real local SLURM cluster: arrays, dependencies, requeue, SIGKILL, resubmit, the run-folder lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fourm.runs import Run, run_id
from regression_job import train
from slurm import scheduler
from slurm.lock import RunLock
from slurm.status import status
from slurm.status import wait
from slurm.submit import Job, Resources, RunEntry, SlurmLauncher, resubmit, submit

pytestmark = pytest.mark.slurm
ENTRY = f"{Path(__file__).resolve().parent / 'regression_job.py'}:train"  # a job of the tests, by file
RES = Resources(timeout_min=15, mem_gb=0.5)


def job_for(root: Path, config: dict, **kw) -> Job:
    return Job(str(root / "runs" / run_id(config)), config, ENTRY, **kw)


def reference_metrics(job_dir: Path, config: dict) -> dict:
    """The same config trained uninterrupted, in this process."""
    rdir = job_dir / "reference" / run_id(config)
    return train(config, str(rdir))


def sacct_state(job_id: str) -> str:
    return scheduler.job_states([job_id])[job_id].state


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def logged_step(run_dir: str) -> int:
    steps = [r["step"] for r in Run(run_dir).read_log() if "step" in r and "event" not in r]
    return max(steps, default=0)


def events(run_dir: str, name: str) -> list[dict]:
    return [r for r in Run(run_dir).read_log() if r.get("event") == name]


def test_worker_python_is_the_venv(slurm_cluster, job_dir):
    launcher = SlurmLauncher(job_dir / "logs")
    assert Path(launcher.python) == Path(sys.executable)
    assert scheduler.max_array_size() >= 2


def test_lock_of_a_job_slurm_no_longer_runs_is_stale(slurm_cluster, job_dir):
    (job_dir / ".lock").write_text(json.dumps({"job_id": "999999_0", "host": "another-node", "pid": 1, "time": 0}))
    with RunLock(job_dir, job_id="5") as lock:
        assert lock.acquired


def test_array_chunks_and_dependency(slurm_cluster, job_dir, monkeypatch):
    # 3 runs with MaxArraySize pretended to be 2: one array of 2 and one more job; a child waits for run 0
    monkeypatch.setattr(scheduler, "max_array_size", lambda: 2)
    parents = [{"seed": s, "steps": 10} for s in range(3)]
    child = {"seed": 9, "steps": 10, "init_from": str(job_dir / "runs" / run_id(parents[0]))}
    jobs = [job_for(job_dir, c) for c in parents] + [job_for(job_dir, child, after=(run_id(parents[0]),))]
    submitted = submit(job_dir / "sweep", jobs, RES)
    assert sorted(submitted) == sorted(j.run_id for j in jobs)

    manifest = json.loads((job_dir / "sweep" / "manifest.json").read_text())["runs"]
    parent_jobs = [manifest[run_id(c)]["jobs"][-1] for c in parents]
    assert len({j["job_id"].split("_")[0] for j in parent_jobs}) == 2  # two sbatch submissions
    assert sorted(j["array_index"] for j in parent_jobs if j["array_index"] is not None) == [0, 1]
    child_job = manifest[run_id(child)]["jobs"][-1]
    assert child_job["dependency"] == f"afterok:{parent_jobs[0]['job_id']}"

    final = wait(job_dir / "sweep", timeout_s=150)
    assert set(final.values()) == {"DONE"}
    ids = [j["job_id"] for j in parent_jobs + [child_job]]
    # DONE is written just before the job's process exits; wait also waits for SLURM to record the end
    assert [sacct_state(j) for j in ids] == ["COMPLETED"] * 4
    init = events(str(job_dir / "runs" / run_id(child)), "init_from")[0]
    assert init["started_at"] >= init["parent_done_at"]  # the child ran only after its parent was DONE
    assert Run(job_dir / "runs" / run_id(parents[1])).metrics == reference_metrics(job_dir, parents[1])
    assert resubmit(job_dir / "sweep") == []  # everything DONE: nothing to submit


def test_requeue_and_sigkill_resume_from_checkpoint(slurm_cluster, job_dir):
    # two slow runs side by side: one is requeued by SLURM, the other SIGKILLed and resubmitted
    # 60 steps of 0.25 s: after step 10 the job still needs longer than the cluster's KillWait (5 s), so the
    # requeue's SIGTERM (ignored by submitit) is followed by a real SIGKILL before the run can finish
    requeued = {"seed": 1, "steps": 60, "step_sleep_s": 0.25, "checkpoint_every": 5, "name": "requeued"}
    killed = {"seed": 1, "steps": 60, "step_sleep_s": 0.25, "checkpoint_every": 5, "name": "killed"}
    jobs = [job_for(job_dir, requeued), job_for(job_dir, killed)]
    sweep = job_dir / "sweep"
    submit(sweep, jobs, RES)
    q_dir, k_dir = jobs[0].run_dir, jobs[1].run_dir
    manifest = json.loads((sweep / "manifest.json").read_text())["runs"]
    q_job, k_job = (manifest[j.run_id]["jobs"][-1]["job_id"] for j in jobs)

    wait_for(lambda: logged_step(q_dir) >= 10 and logged_step(k_dir) >= 10, 90, "both runs past step 10")
    subprocess.run(["scontrol", "requeue", q_job], check=True)
    # SIGKILL the worker process itself (its pid is in the run folder's lock): no handler can run
    os.kill(json.loads(Path(k_dir, ".lock").read_text())["pid"], signal.SIGKILL)

    wait_for(lambda: sacct_state(k_job) not in scheduler.ACTIVE, 60, "the killed job to end")
    rows = status(sweep).by_run()
    assert rows[jobs[1].run_id].state == "FAILED"
    assert "step " in rows[jobs[1].run_id].log_tail  # the job's own output, up to where it died
    assert rows[jobs[0].run_id].state in ("REQUEUED", "PENDING", "RUNNING")
    assert not Path(k_dir, "DONE").exists()

    # only the killed run is resubmitted: the requeued one is still SLURM's
    assert resubmit(sweep) == [jobs[1].run_id]
    assert resubmit(sweep) == []
    final = wait(sweep, timeout_s=150)
    assert final == {jobs[0].run_id: "DONE", jobs[1].run_id: "DONE"}

    expected = reference_metrics(job_dir, requeued)
    for rdir in (q_dir, k_dir):
        resumed = events(rdir, "resume")
        assert len(resumed) == 1 and resumed[0]["step"] >= 10  # restarted from the checkpoint on disk
        assert len(events(rdir, "start")) == 1 and len(events(rdir, "done")) == 1
        assert Run(rdir).metrics == expected  # bit-identical to an uninterrupted run
    assert events(q_dir, "resume")[0]["restarts"] == "1"


def test_two_jobs_never_write_one_run(slurm_cluster, job_dir):
    config = {"seed": 3, "steps": 30, "step_sleep_s": 0.2}
    run_dir = job_dir / "runs" / run_id(config)
    launcher = SlurmLauncher(job_dir / "logs")
    # bypass submit()'s bookkeeping on purpose: two array tasks for one run folder, running at once
    recs = launcher.submit_array([RunEntry(ENTRY, config, str(run_dir))] * 2, RES)
    ids = [r["job_id"] for r in recs]
    wait_for(lambda: all(sacct_state(j) == "COMPLETED" for j in ids), 120, "both jobs to complete")
    assert len(events(str(run_dir), "start")) == 1 and len(events(str(run_dir), "done")) == 1
    outputs = [Path(job_dir / "logs" / j / f"{j}_0_log.out").read_text() for j in ids]
    assert sum("locked by live job" in o or "already DONE" in o for o in outputs) == 1
    assert not (run_dir / ".lock").exists()
