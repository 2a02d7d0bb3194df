"""The tiny demo pipeline on the real local SLURM cluster: afterok dependencies, token shards encoded by an array of
two tasks, the same run folders as the local launcher (a local launch over the same work folder finds every one DONE),
and a rerun that submits nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ablations.pipeline import run_pipeline
from fourm.runs import Run
from slurm import scheduler

pytestmark = pytest.mark.slurm
# 0.5 GB a job: without a memory request a job holds the node's whole memory and the jobs run one at a time
SETS = ["resources.default.mem_gb=0.5", "resources.default.timeout_min=20", "shards.parts=2",
        "shards.common=[crops=1,rgb_size=112,threads=2,samples_per_shard=16]"]  # 32 pretraining samples: 2 shards


def test_tiny_demo_on_slurm_writes_the_local_launchers_run_folders(slurm_cluster, job_dir):
    work, out = job_dir / "work", job_dir / "out"
    result = run_pipeline("demo_tiny", work, out, launcher="slurm", sets=SETS, wait=True)
    stages = result["stages"]
    assert sorted(result["submitted"]) == sorted(Path(s["run_dir"]).name for s in stages)
    assert all(Run(s["run_dir"]).done for s in stages)
    manifest = json.loads((work / "pipeline-slurm" / "manifest.json").read_text())["runs"]
    by_kind = {}
    for s in stages:
        by_kind.setdefault(s["kind"], []).append(Path(s["run_dir"]).name)
    # each job was submitted afterok the SLURM jobs of its parents, which SLURM ran to COMPLETED
    pretrain = manifest[by_kind["pretrain"][0]]["jobs"][-1]
    parents = [manifest[r]["jobs"][-1]["job_id"] for r in (by_kind["shards"][-1], by_kind["text_tokenizer"][0])]
    assert pretrain["dependency"].startswith("afterok:") and set(pretrain["dependency"][8:].split(":")) == set(parents)
    # the two encode tasks ran as one SLURM array (job ids <array>_<task>); the index job after both
    parts = [manifest[r]["jobs"][-1]["job_id"] for r in by_kind["shards"][:2]]
    assert len({j.split("_")[0] for j in parts}) == 1 and all("_" in j for j in parts)
    index_job = manifest[by_kind["shards"][-1]]["jobs"][-1]
    assert set(parts) <= set(index_job["dependency"][8:].split(":"))
    shard_runs = [Run(s["run_dir"]) for s in stages if s["kind"] == "shards"]
    assert [r.metrics["pretrain"]["written"] for r in shard_runs[:2]] == [1, 1]  # one of the 2 shards each
    assert shard_runs[-1].metrics["pretrain"]["shards"] == 2
    jobs = [e["jobs"][-1]["job_id"] for e in manifest.values()]
    assert {s.state for s in scheduler.job_states(jobs).values()} == {"COMPLETED"}
    assert len(jobs) == len(set(jobs)) == 16
    # a run folder's env.json names the SLURM job that wrote it
    assert json.loads((Path(stages[0]["run_dir"]) / "env.json").read_text())["slurm"]["SLURM_JOB_ID"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pretrained_vs_random"]) == {"in1k"} and (out / "generations.png").exists()

    # the local launcher plans the same run folders, finds them DONE and runs nothing
    local = run_pipeline("demo_tiny", work, out, launcher="local", sets=SETS)
    assert local["submitted"] == [] and [s["run_dir"] for s in local["stages"]] == [s["run_dir"] for s in stages]
    # and SLURM again: nothing to submit
    assert run_pipeline("demo_tiny", work, out, launcher="slurm", sets=SETS)["submitted"] == []
