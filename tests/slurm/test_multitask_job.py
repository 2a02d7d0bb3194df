"""A 2-task SLURM job on the local cluster (one node, CPU, gloo): one ImageNet-1K transfer, data-parallel over the
job's two ranks, gives the single-process metrics and writes one run folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fourm.runs import Run, run_id
from slurm import scheduler
from slurm.status import wait
from slurm.submit import Job, Resources, submit

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    from fourm.data import world
    from fourm.data.layouts import write_layouts

    root = tmp_path_factory.mktemp("multitask_world")
    world.generate(str(root), num=16, size=64, seed=0, split="train")
    world.generate(str(root), num=8, size=64, seed=0, split="val")
    return write_layouts(root, root / "layouts")


def test_two_task_job_trains_one_transfer_on_both_ranks(slurm_cluster, job_dir, layouts):
    from transfer.run import make_config, run_transfer

    cfg = make_config("in1k", "tiny", ["init=random", f"data_root={layouts}", "train.drop_path=0.0", "train.mixup=0.0",
                                       "train.cutmix=0.0", "train.epochs=1"])
    run_dir = job_dir / "runs" / run_id(cfg)
    res = Resources(timeout_min=20, mem_gb=1.0, nodes=1, tasks_per_node=2, cpus_per_task=1)
    submitted = submit(job_dir / "sweep", [Job(str(run_dir), cfg, "ablations.stages:transfer", resources=res)])
    assert submitted == [run_dir.name]
    wait(job_dir / "sweep", timeout_s=600)
    manifest = json.loads((job_dir / "sweep" / "manifest.json").read_text())
    job_id = manifest["runs"][run_dir.name]["jobs"][-1]["job_id"]
    # the run is DONE once rank 0 wrote it; wait also waits for the job to end with its last rank
    assert scheduler.job_states([job_id])[job_id].state == "COMPLETED"
    assert [p.name for p in (job_dir / "runs").iterdir()] == [run_dir.name]  # one run folder, not one per rank
    run = Run(run_dir)
    assert run.done and run.metrics["ranks"] == 2
    starts = [r for r in run.read_log() if r.get("event") == "job_start"]
    assert len(starts) == 1 and starts[0]["job_id"] == job_id  # rank 0 alone logs
    # both ranks worked: SLURM ran two tasks of the job's step, and each printed its rank
    log_dir = Path(manifest["log_dir"]) / job_id
    outs = sorted(p.name for p in log_dir.glob(f"{job_id}_*_log.out"))
    assert outs == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"]
    # the same metrics as one process at the same global batch
    ref = run_transfer(cfg, runs_root=str(job_dir / "reference")).metrics
    assert ref["ranks"] == 1 and ref["val_images"] == run.metrics["val_images"] == 8
    assert run.metrics["top1"] == ref["top1"]
    assert abs(run.metrics["train_loss"] - ref["train_loss"]) < 1e-5
    assert abs(run.metrics["val_loss"] - ref["val_loss"]) < 1e-5
