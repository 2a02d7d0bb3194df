"""`fourm-bench sweep`: dry-run plan, GPU-hours basis, DONE runs skipped, bad points refused with nothing written."""
from __future__ import annotations

import pytest

from ablations.grid import load_grid
from ablations.plan import plan
from slurm.sweep import assumed_tokens_per_s, cli, gpu_hours, resources_for

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
    assert "transfer 4 jobs in 2 array(s) (one per pretraining run); 4 afterok a pretraining job" in out
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


def test_multi_gpu_pretraining_gets_one_task_per_gpu():
    pre = resources_for("pretrain", None, 4, 600, 16, 8, None)
    tra = resources_for("transfer", None, 4, 600, 16, 8, None)
    assert (pre.gpus_per_node, pre.extra) == (4, {"ntasks_per_node": 4})
    assert (tra.gpus_per_node, tra.extra) == (1, {})
