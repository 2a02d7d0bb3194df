"""The tiny demo pipeline on the real local SLURM cluster: afterok dependencies, the same run folders as the local
launcher (a local launch over the same work folder finds every one DONE), and a rerun that submits nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ablations.pipeline import run_pipeline
from fourm.runs import Run
from slurm import scheduler

pytestmark = pytest.mark.slurm
# 0.5 GB a job: without a memory request a job holds the node's whole memory and the jobs run one at a time
SETS = ["resources.default.mem_gb=0.5", "resources.default.timeout_min=20"]


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
    parents = [manifest[r]["jobs"][-1]["job_id"] for r in (by_kind["shards"][0], by_kind["text_tokenizer"][0])]
    assert pretrain["dependency"].startswith("afterok:") and set(pretrain["dependency"][8:].split(":")) == set(parents)
    jobs = [e["jobs"][-1]["job_id"] for e in manifest.values()]
    assert {s.state for s in scheduler.job_states(jobs).values()} == {"COMPLETED"}
    assert len(jobs) == len(set(jobs)) == 14
    # a run folder's env.json names the SLURM job that wrote it
    assert json.loads((Path(stages[0]["run_dir"]) / "env.json").read_text())["slurm"]["SLURM_JOB_ID"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pretrained_vs_random"]) == {"in1k"} and (out / "generations.png").exists()

    # the local launcher plans the same run folders, finds them DONE and runs nothing
    local = run_pipeline("demo_tiny", work, out, launcher="local", sets=SETS)
    assert local["submitted"] == [] and [s["run_dir"] for s in local["stages"]] == [s["run_dir"] for s in stages]
    # and SLURM again: nothing to submit
    assert run_pipeline("demo_tiny", work, out, launcher="slurm", sets=SETS)["submitted"] == []
