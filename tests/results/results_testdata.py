"""Run configs and metrics for the results tests (the fixtures in conftest.py write them with fourm.runs)."""
from __future__ import annotations

from fourm.runs import open_run

# (method, size, task, seed) -> metrics; fractions for coco/nyuv2 as mmdet and our depth head write them
TRANSFER_RUNS = {
    ("4M", "B", "in1k", 0): {"top1": 84.0, "top5": 96.9},
    ("4M", "B", "in1k", 1): {"top1": 84.4, "top5": 97.1},
    ("4M", "B", "coco", 0): {"coco": {"bbox_mAP": 0.490, "segm_mAP": 0.425, "bbox_mAP_50": 0.70}},
    ("4M", "B", "coco", 1): {"coco": {"bbox_mAP": 0.496, "segm_mAP": 0.427, "bbox_mAP_50": 0.71}},
    ("4M", "B", "ade20k", 0): {"mIoU": 49.8, "aAcc": 82.0},
    ("4M", "B", "ade20k", 1): {"mIoU": 50.2, "aAcc": 82.4},
    ("4M", "B", "nyuv2_depth", 0): {"delta1": 0.918, "abs_rel": 0.11},
    ("4M", "B", "nyuv2_depth", 1): {"delta1": 0.922, "abs_rel": 0.10},
    ("MAE", "B", "in1k", 0): {"top1": 83.9},
}

ALPHA_LOSSES = {  # alpha -> task -> per-seed val/loss
    0.2: {"in1k": [1.00, 1.10], "ade20k": [2.0, 2.2]},
    0.5: {"in1k": [0.80, 0.90], "ade20k": [2.1, 2.3]},
    1.0: {"in1k": [0.95, 0.97], "ade20k": [1.8, 1.9]},
}
TASK_EPOCHS = {"in1k": 2, "ade20k": 3}
SIZE_NAMES = {"B": "base", "L": "large"}


def transfer_config(method, size, task, seed, **extra):
    cfg = {"model": {"size": size, "name": f"fm_{SIZE_NAMES[size]}_12e_12d"},
           "transfer": {"task": task, "init": f"/ckpt/{method}-{size}.safetensors", "epochs": 1}, "seed": seed}
    if method is not None:
        cfg["method"] = method
    cfg.update(extra)
    return cfg


def finished(root, config, metrics):
    run = open_run(root, config)
    run.write_metrics(metrics)
    run.mark_done()
    return run
