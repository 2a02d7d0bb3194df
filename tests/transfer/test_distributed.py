"""Data-parallel transfer on CPU: 2 gloo ranks under torchrun give the metrics of 1 process at the same global batch,
and write one run folder.

Each case runs the real command (``fourm-bench transfer``, i.e. ``python -m fourm.cli transfer``) twice: alone, and
under ``torch.distributed.run --nproc_per_node 2``. What can differ is only the order of floating-point sums (the
all-reduce of the gradients, two half-batch forwards instead of one), hence the tolerances below.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fourm.runs import Run

# |2 ranks - 1 process| after a few optimizer updates in float32 (measured: ~1e-7 on losses of order 1)
TOL_LOSS = 1e-5
TOL_PERCENT = 1e-6  # accuracy counts: identical predictions, so identical percentages
TOL_COCO_REL = 0.01  # COCO: relative, the samplers draw per rank (see its test)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _transfer(args: list[str], runs_root: Path, ranks: int) -> Run:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "fourm.cli", "transfer", *args, f"runs_root={runs_root}"]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "fourm.cli", "transfer", *args,
               f"runs_root={runs_root}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folders = [p for p in runs_root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # one run folder, written by rank 0 only
    run = Run(folders[0])
    assert run.done
    return run


def _pair(args: list[str], tmp_path: Path) -> tuple[dict, dict, Run]:
    one = _transfer(args, tmp_path / "one", 1)
    two = _transfer(args, tmp_path / "two", 2)
    assert one.id == two.id  # the rank count is how a run is computed, not what
    return one.metrics, two.metrics, two


def test_in1k_two_ranks_match_one_process(transfer_data_root, tmp_path):
    # augmentation stays on (each image's draws are seeded by the image); drop path and mixup draw per rank: off
    args = ["task=in1k", "profile=tiny", "init=random", f"data_root={transfer_data_root}", "train.drop_path=0.0",
            "train.mixup=0.0", "train.cutmix=0.0", "train.epochs=2", "train.accum_iter=2"]
    one, two, run = _pair(args, tmp_path)
    print({k: (one[k], two[k]) for k in ("train_loss", "val_loss", "top1", "top5")})
    assert one["ranks"] == 1 and two["ranks"] == 2
    assert two["val_images"] == one["val_images"] == 16  # every validation image counted once
    assert abs(two["train_loss"] - one["train_loss"]) < TOL_LOSS and abs(two["val_loss"] - one["val_loss"]) < TOL_LOSS
    assert abs(two["top1"] - one["top1"]) < TOL_PERCENT and abs(two["top5"] - one["top5"]) < TOL_PERCENT
    # the per-update log is rank 0's alone: one line per optimizer update (32 images / global batch 8, 2 epochs)
    steps = [r["step"] for r in run.read_log() if "step" in r and "loss" in r]
    assert steps == list(range(1, 9))
    assert (run.path / "checkpoint.pt").exists()


def test_in1k_refuses_a_global_batch_the_ranks_cannot_split(transfer_data_root, tmp_path):
    from transfer import classification as cls
    from transfer.configs import ConfigError

    with pytest.raises(ConfigError, match=r"train.batch_size=8 \(the global batch\) must be a multiple of 3 ranks x 1"):
        cls.per_step_batch({"batch_size": 8, "accum_iter": 1}, world_size=3)
    assert cls.per_step_batch({"batch_size": 1024, "accum_iter": 2}, world_size=32) == 16


def test_ade20k_two_ranks_match_one_process(transfer_data_root, tmp_path):
    """The mmseg runner under launcher="pytorch": the encoder fine-tuned with a linear head (no BN, whose batch
    statistics are per rank on CPU), dropout and drop path off, and a pipeline without random draws (the images are
    the crop size, no flip, no photometric distortion)."""
    args = ["task=ade20k", "profile=tiny", "init=random", f"data_root={transfer_data_root}", "train.iters=6",
            "train.checkpoint_interval=6", "train.drop_path=0.0", "mm.neck=null", "mm.auxiliary_head=null",
            "mm.decode_head.type=FCNHead", "~mm.decode_head.pool_scales=null", "+mm.decode_head.in_index=3",
            "+mm.decode_head.num_convs=0", "+mm.decode_head.concat_input=false", "mm.decode_head.dropout_ratio=0",
            "mm.train_pipeline.ratio_range=[1.0,1.0]", "mm.train_pipeline.flip_prob=0.0",
            "mm.train_pipeline.photometric=false"]
    one, two, run = _pair(args, tmp_path)
    print({k: (one[k], two[k]) for k in ("mIoU", "aAcc")})
    assert abs(two["mIoU"] - one["mIoU"]) < 0.05 and abs(two["aAcc"] - one["aAcc"]) < 0.05  # percent
    losses = {}
    for name, r in (("one", Run(tmp_path / "one" / run.id)), ("two", run)):
        losses[name] = [x["loss"] for x in r.read_log() if "loss" in x and "step" in x]
    assert len(losses["one"]) == len(losses["two"]) > 0
    for a, b in zip(losses["one"], losses["two"]):
        assert abs(a - b) < TOL_LOSS, losses


def test_coco_two_ranks_train_the_same_detector(transfer_data_root, tmp_path):
    """The mmdet runner under launcher="pytorch". LSJ without random draws (no flip, scale 1); what stays random is
    the RPN's and the R-CNN's sampling of anchors and proposals, drawn per image on each rank and normalised per rank,
    hence a looser tolerance than the other tasks."""
    args = ["task=coco", "profile=tiny", "init=random", f"data_root={transfer_data_root}", "train.iters=4",
            "mm.lsj.ratio_range=[1.0,1.0]", "mm.lsj.flip_prob=0.0"]
    one, two, run = _pair(args, tmp_path)
    losses = {}
    for name, r in (("one", Run(tmp_path / "one" / run.id)), ("two", run)):
        losses[name] = [x["loss"] for x in r.read_log() if "loss" in x and "step" in x]
    print(losses, {k: (one[k], two[k]) for k in ("bbox_mAP", "segm_mAP")})
    assert len(losses["one"]) == len(losses["two"]) == 4
    for a, b in zip(losses["one"], losses["two"]):
        assert abs(a - b) / a < TOL_COCO_REL, losses
    assert abs(two["bbox_mAP"] - one["bbox_mAP"]) <= 0.01
