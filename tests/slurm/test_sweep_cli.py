"""`fourm-bench sweep`: dry-run plan, GPU-hours basis, DONE runs skipped, bad points refused with nothing written."""
from __future__ import annotations

import pytest

from ablations.grid import load_grid
from ablations.plan import plan
from slurm.shapes import Shape, ShapeError, job_shape
from ablations.sweep import assumed_tokens_per_s, cli, gpu_hours, resources_for

PARAMS = ["params.train_shards=/data/train-{000000..000009}.tar", "params.val_shards=/data/val-000000.tar",
          "params.text_tokenizer=/data/tok.json", "params.data_root=/datasets"]


def sweep_args(tmp_path, *extra, grid="alphas"):
    sets = [a for s in PARAMS for a in ("--set", s)]
    return [grid, *sets, "--set", "evaluate.tasks=[in1k,ade20k]", "--runs-root", str(tmp_path / "runs"),
            "--sweep-dir", str(tmp_path / "sweep"), *extra]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    two = "only.alphas=mod7_all2all_a0.1,mod7_all2all_a0.5"
    assert cli(sweep_args(tmp_path, "--dry-run", "--gpus", "8", "--set", two)) == 0
    out = capsys.readouterr().out
    assert "pretrain      2 runs: 0 DONE, 0 queued/running, 2 to submit" in out
    assert "transfer      4 runs: 0 DONE, 0 queued/running, 4 to submit" in out
    assert "transfer 4 jobs in 4 array(s) (one per pretraining run and job shape); 4 afterok a pretraining job" in out
    # 2 x 100B tokens of 4M-B at the assumed A100 rate, plus 2 x (IN1K 40 + ADE20K 16) assumed GPU-hours
    pre = 2 * 100e9 / (0.3 * 312e12 / (6 * 12 * 768 ** 2 * 24 / 2)) / 3600
    assert f"pretrain {pre:.1f}, transfer 112.0, total {pre + 112:.1f}" in out
    assert "base: " in out and "tok/s/GPU assumed" in out and "dry run: nothing submitted" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep").exists()


def test_measured_throughput_replaces_the_assumption(tmp_path, capsys):
    one = "only.alphas=mod7_all2all_a0.1"
    assert cli(sweep_args(tmp_path, "--dry-run", "--tokens-per-s", "base=1e6", "--set", one)) == 0
    out = capsys.readouterr().out
    assert f"pretrain {100e9 / 1e6 / 3600:.1f}," in out and "base: 1e+06 tok/s/GPU measured" in out


def test_gpu_hours_scale_with_model_size(tmp_path):
    runs = plan(load_grid("scaling_model", PARAMS + ["evaluate.tasks=[in1k]"]), tmp_path, progress=False)
    pre = {r.model: r for r in runs if r.kind == "pretrain"}
    tra = {r.model: r for r in runs if r.kind == "transfer"}
    base, large = "fm_base_12e_12d_swiglu_nobias", "fm_large_24e_24d_swiglu_nobias"
    # large: (1024/768)^2 x (48/24) the FLOPs per token of base, same tokens
    assert gpu_hours(pre[large], {}) / gpu_hours(pre[base], {}) == pytest.approx((1024 / 768) ** 2 * 2)
    assert gpu_hours(tra[base], {}) == 40.0 and gpu_hours(tra[large], {}) == pytest.approx(40 * (1024 / 768) ** 2 * 2)
    assert assumed_tokens_per_s("base") == pytest.approx(0.3 * 312e12 / (6 * 12 * 768 ** 2 * 12))


def test_done_runs_are_not_submitted_again(tmp_path, capsys):
    args = sweep_args(tmp_path, "--dry-run", "--set", "only.alphas=mod7_all2all_a0.1,mod7_all2all_a0.5")
    two = "only.alphas=mod7_all2all_a0.1,mod7_all2all_a0.5"
    runs = plan(load_grid("alphas", PARAMS + ["evaluate.tasks=[in1k,ade20k]", two]), tmp_path / "runs", progress=False)
    finished = [r for r in runs if r.kind == "pretrain"][:1] + [r for r in runs if r.kind == "transfer"][:1]
    for r in finished:  # a run folder another sweep already finished (the id is the config hash)
        (tmp_path / "runs" / r.kind / r.run_id).mkdir(parents=True)
        (tmp_path / "runs" / r.kind / r.run_id / "DONE").write_text("x\n")
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "pretrain      2 runs: 1 DONE, 0 queued/running, 1 to submit" in out
    assert "transfer      4 runs: 1 DONE, 0 queued/running, 3 to submit" in out


def test_a_bad_point_exits_2_with_one_line_and_submits_nothing(tmp_path, capsys):
    rc = cli(sweep_args(tmp_path, "--launcher", "local", "--set", "budget.num_target_tokens=0"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fourm-bench sweep:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err  # (the rest of stderr is the progress bar)
    assert "point alphas=mod7_all2all_a0.1: key budget.num_target_tokens: 0 must be an int in 1.." in err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "runs").exists()
    assert cli(sweep_args(tmp_path, "--time", "5")) == 2
    assert "timeout_min=5" in capsys.readouterr().err


def test_job_shapes_keep_the_global_batch():
    # COCO (ViTDet): 64 images on 64 GPUs, no accumulation -> 8 nodes x 8 GPUs, 1 image each
    coco = job_shape(64, 64, 8, 100, what="coco", can_accumulate=False)
    assert (coco.nodes, coco.tasks_per_node, coco.per_rank_batch, coco.accum) == (8, 8, 1, 1)
    # ImageNet-1K: 1024 over 32 GPUs; on one 8-GPU node the same batch takes 4 accumulation steps of 32
    assert job_shape(1024, 32, 8, 100, what="in1k").describe().startswith("4 node(s) x 8 GPU(s), 32/rank x 1 accum")
    one = job_shape(1024, 32, 8, 1, what="in1k")
    assert (one.ranks, one.per_rank_batch, one.accum) == (8, 32, 4)
    assert one.per_rank_batch * one.ranks * one.accum == 1024
    # 6 GPUs a node do not split 16: the shape drops to the largest divisor, 4 GPUs, and accumulates
    odd = job_shape(16, 8, 6, 1, what="ade20k")
    assert (odd.ranks, odd.per_rank_batch, odd.accum) == (4, 2, 2)
    with pytest.raises(ShapeError, match=r"coco: global batch 64 at 1 per GPU needs 64 GPUs; 16 GPUs \(2 node\(s\) x 8\) "
                                         r"would put 4 on a GPU .* Use --max-nodes 8, or, .* reference_gpus=16"):
        job_shape(64, 64, 8, 2, what="coco", can_accumulate=False)


def test_resources_give_one_task_and_gpu_per_rank():
    res = resources_for(job_shape(64, 64, 8, 100, what="coco"), None, 8, 600, 16, 8, None)
    assert (res.nodes, res.tasks_per_node, res.gpus_per_node, res.cpus_per_task) == (8, 8, 8, 8)
    cpu = resources_for(Shape(1, 1, 8, 1, 8, 1), None, 0, 600, 16, 2, None)
    assert (cpu.nodes, cpu.tasks_per_node, cpu.gpus_per_node) == (1, 1, 0)


def test_paper_transfer_dry_run_prints_each_jobs_shape(tmp_path, capsys):
    sets = ["params.ckpt_b=/w/b.safetensors", "params.ckpt_l=/w/l.safetensors", "params.data_root=/datasets"]
    argv = ["paper_transfer", *[a for s in sets for a in ("--set", s)], "--dry-run", "--gpus-per-node", "8",
            "--runs-root", str(tmp_path / "runs"), "--sweep-dir", str(tmp_path / "sweep")]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["transfer"] and len(parts) == 10 and parts[2].startswith("checkpoint="):
            rows[(parts[1], parts[2])] = tuple(int(x) for x in parts[-7:-1])
    # nodes, tasks, batch/rank, accum, global, reference GPUs
    want = {"in1k": (4, 8, 32, 1, 1024, 32), "coco": (8, 8, 1, 1, 64, 64), "ade20k": (1, 8, 2, 1, 16, 8),
            "nyuv2_depth": (1, 8, 8, 1, 64, 8)}
    for point in ("checkpoint=4M-B", "checkpoint=4M-L"):
        for task, shape in want.items():
            assert rows[(task, point)] == shape, (task, point, out)
    # on one node, ImageNet-1K accumulates and COCO is refused with what to do
    assert cli(argv + ["--max-nodes", "1", "--set", "evaluate.tasks=[in1k]"]) == 0
    assert "    1     8         32     4   1024       32" in capsys.readouterr().out
    assert cli(argv + ["--max-nodes", "1"]) == 2
    assert "Use --max-nodes 8" in capsys.readouterr().err
