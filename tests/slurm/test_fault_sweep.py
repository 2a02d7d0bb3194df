"""Fault suite: a real sweep (tiny pretraining + tiny IN1K transfers) on the local SLURM cluster, hit by a requeue
(the preemption path), a SIGKILL and a resubmission of the whole sweep while jobs run; then every run must finish
exactly once, written by one job at a time, with resumed metrics bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ablations.tiny_world import build, set_args
from fourm.runs import Run, find_runs, run_id
from ablations import stages as jobs
from slurm import scheduler
from slurm.status import status
from slurm.status import wait
from ablations.sweep import cli

pytestmark = pytest.mark.slurm
STEPS = 32  # 4 samples x (32 + 32) tokens per step
TIMING = ("seconds", "tokens_per_second", "checkpoint")  # wall-clock and the run's own path: not results


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def logged_step(run_dir: str) -> int:
    return max((r["step"] for r in Run(run_dir).read_log() if "loss" in r and "step" in r), default=0)


def manifest(sweep: Path) -> dict:
    return json.loads((sweep / "manifest.json").read_text())["runs"]


def segments(run_dir: str) -> list[tuple[dict, list[dict]]]:
    """The run's log split at each job_start: (the job_start record, the records that job wrote)."""
    out = []
    for rec in Run(run_dir).read_log():
        if rec.get("event") == "job_start":
            out.append((rec, []))
        else:
            assert out, f"{run_dir}: a record before any job_start: {rec}"
            out[-1][1].append(rec)
    return out


def test_sweep_survives_requeue_sigkill_and_resubmission(slurm_cluster, job_dir, capsys):
    t0 = time.monotonic()
    params = build(job_dir / "data")
    runs_root, sweep = job_dir / "runs", job_dir / "sweep"
    args = ["tiny", *set_args(params), "--set", f"schedule.total_tokens={STEPS * 256}", "--runs-root", str(runs_root),
            "--sweep-dir", str(sweep), "--gpus", "0", "--time", "15", "--mem-gb", "1"]
    assert cli(args) == 0
    runs = manifest(sweep)
    pre = sorted(r for r, e in runs.items() if e["entry"] == "ablations.stages:pretrain")
    children = {p: [r for r, e in runs.items() if e["after"] == [p]] for p in pre}
    assert len(pre) == 2 and all(len(c) == 1 for c in children.values()) and len(runs) == 4
    requeued, killed = pre
    q_dir, k_dir = runs[requeued]["run_dir"], runs[killed]["run_dir"]
    q_job, k_job = runs[requeued]["jobs"][-1]["job_id"], runs[killed]["jobs"][-1]["job_id"]
    # the children wait for their parents' jobs, with init = the parent's final checkpoint
    for p in pre:
        child = runs[children[p][0]]
        assert child["jobs"][-1]["dependency"] == f"afterok:{runs[p]['jobs'][-1]['job_id']}"
        final = f"{runs[p]['run_dir']}/checkpoints/step-{STEPS:06d}/model.safetensors"
        assert child["config"]["transfer"]["init"] == final

    # both pretraining runs past their second checkpoint (every 2 steps), then: requeue one, SIGKILL the other
    wait_for(lambda: logged_step(q_dir) >= 4 and logged_step(k_dir) >= 4, 120, "both runs past step 4")
    subprocess.run(["scontrol", "requeue", q_job], check=True)
    os.kill(json.loads(Path(k_dir, ".lock").read_text())["pid"], signal.SIGKILL)
    wait_for(lambda: scheduler.job_states([k_job])[k_job].state not in scheduler.ACTIVE, 60, "the killed job to end")
    # SLURM holds the requeued job for KillWait, then queues it again (BeginTime: the requeue delay)
    table = wait_for(lambda: (t := status(sweep)).by_run()[requeued].state in ("REQUEUED", "PENDING") and t, 60,
                     "the requeued job to wait in the queue")
    rows = table.by_run()
    assert rows[killed].state == "FAILED" and "pretrain" in rows[killed].log_tail
    assert not Path(k_dir, "DONE").exists()
    with capsys.disabled():
        print(f"\n--- status after requeue + SIGKILL ({time.monotonic() - t0:.0f}s) ---\n"
              + "\n".join(table.format().splitlines()[:5] + table.format().splitlines()[-1:]))

    # resubmit the whole sweep while the requeued run is still SLURM's: only the killed run and its child go again
    assert cli(args) == 0
    runs = manifest(sweep)
    assert len(runs[killed]["jobs"]) == 2 and len(runs[children[killed][0]]["jobs"]) == 2
    assert len(runs[requeued]["jobs"]) == 1 and len(runs[children[requeued][0]]["jobs"]) == 1
    assert runs[children[killed][0]]["jobs"][-1]["dependency"] == f"afterok:{runs[killed]['jobs'][-1]['job_id']}"

    final = wait(sweep, poll_s=1, timeout_s=300)
    assert set(final.values()) == {"DONE"}, final
    assert cli(args) == 0 and all(len(manifest(sweep)[r]["jobs"]) == len(runs[r]["jobs"]) for r in runs)
    with capsys.disabled():
        print(f"--- final status ({time.monotonic() - t0:.0f}s) ---\n" + status(sweep).format())

    # every run: one job at a time, steps continuing from the checkpoint, finished exactly once
    for rid, entry in runs.items():
        segs = segments(entry["run_dir"])
        job_ids = [s[0]["job_id"] for s in segs]
        if rid == requeued:
            assert job_ids == [q_job, q_job] and [s[0]["restarts"] for s in segs] == [0, 1]
        elif rid == killed:
            assert job_ids == [k_job, runs[killed]["jobs"][-1]["job_id"]]
        else:
            assert len(segs) == 1  # the cancelled first child never started
        if rid in pre:
            for i, (_, recs) in enumerate(segs):
                steps = [r["step"] for r in recs if "loss" in r and "step" in r]
                start = 0 if i == 0 else next(r["step"] for r in recs if r.get("event") == "resume")
                assert steps == list(range(start + 1, start + 1 + len(steps))), (rid, i, steps)
                assert i == 0 or start >= 2  # resumed from a checkpoint on disk, not from scratch
            assert steps[-1] == STEPS
        else:
            assert [r.get("event") for r in segs[0][1]].count("done") == 1
        assert Run(entry["run_dir"]).done and not Path(entry["run_dir"], ".lock").exists()

    # resumed runs end bit-identical to an uninterrupted run of the same config (same thread count as the jobs)
    torch.set_num_threads(1)
    for rid in pre:
        config = runs[rid]["config"]
        ref_dir = job_dir / "reference" / run_id(config)
        expected = jobs.pretrain(config, str(ref_dir))
        got = Run(runs[rid]["run_dir"]).metrics
        assert {k: v for k, v in got.items() if k not in TIMING} == \
            {k: v for k, v in expected.items() if k not in TIMING}
        a = load_file(got["checkpoint"])
        b = load_file(expected["checkpoint"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # nothing partial or corrupt in the store: results collects every run, no temp files or locks are left
    from results.collect import collect

    counts = collect(str(runs_root), progress=False).counts
    assert counts["done"] == 4 and counts["partial"] == 0 and counts["corrupt"] == 0
    leftovers = [p for p in runs_root.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith((".step-", ".lock"))]
    assert leftovers == []
    for run in find_runs(runs_root):
        assert run_id(run.config) == run.id
    with capsys.disabled():
        print(f"--- fault suite: {time.monotonic() - t0:.0f}s wall ---")
