"""Run folders written with the real run store (fourm.runs), shared by the results tests.

transfer root: 4M-B on all four main tasks x 2 seeds, MAE-B on in1k (1 seed), a random-init in1k run, an
nyuv2_semseg_rgbd run (outside the transfer layout), and the broken ones: a partial run (no DONE), a corrupt
metrics.json, a DONE without metrics.json, and an unparsable config.yaml.

ablation root: pretrain.alpha in {0.2, 0.5, 1.0} x tasks {in1k, ade20k} x seeds {0, 1}, val/loss in metrics["evals"].
"""
from __future__ import annotations

import pytest

from fourm.runs import atomic_write_text, open_run
from results_testdata import ALPHA_LOSSES, TASK_EPOCHS, TRANSFER_RUNS, finished, transfer_config


@pytest.fixture(scope="package")
def transfer_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer_runs")
    broken = {}
    for (method, size, task, seed), metrics in TRANSFER_RUNS.items():
        finished(root, transfer_config(method, size, task, seed), metrics)
    random_cfg = transfer_config(None, "B", "in1k", 0)
    random_cfg["transfer"]["init"] = "random"
    finished(root, random_cfg, {"top1": 40.0})
    finished(root, transfer_config("4M", "B", "nyuv2_semseg_rgbd", 0), {"mIoU": 55.0})
    # partial: running, metrics not final
    partial = open_run(root, transfer_config("4M", "B", "in1k", 7))
    partial.log(step=1, loss=3.0)
    broken["partial"] = partial.path
    # corrupt metrics.json (a torn write by something that did not use the run store's atomic writer)
    bad = open_run(root, transfer_config("4M", "B", "in1k", 8))
    atomic_write_text(bad.path / "metrics.json", '{"top1": 84.')
    bad.mark_done()
    broken["bad_metrics"] = bad.path
    # DONE without metrics.json (written by hand: the run store refuses this order)
    nometrics = open_run(root, transfer_config("4M", "B", "in1k", 9))
    atomic_write_text(nometrics.path / "DONE", "2026-01-01T00:00:00\n")
    broken["no_metrics"] = nometrics.path
    # config.yaml that does not parse (in a folder without config.json, which collect reads first)
    badcfg = open_run(root, transfer_config("4M", "B", "in1k", 10))
    badcfg.write_metrics({"top1": 1.0})
    badcfg.mark_done()
    (badcfg.path / "config.json").unlink()
    atomic_write_text(badcfg.path / "config.yaml", "model: {size: B\ntransfer: [\n")
    broken["bad_config"] = badcfg.path
    return root, broken


@pytest.fixture(scope="package")
def ablation_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation_runs")
    for alpha, tasks in ALPHA_LOSSES.items():
        for task, losses in tasks.items():
            for seed, loss in enumerate(losses):
                cfg = {
                    "pretrain": {"alpha": alpha, "tokens": 1000},
                    "transfer": {"task": task, "init": f"/runs/pretrain/alpha{alpha}/checkpoint-final.pt",
                                 "epochs": TASK_EPOCHS[task]},
                    "seed": seed,
                }
                # the earlier eval is worse, so `last` and `best:val/loss` agree here
                finished(root, cfg, {"evals": [{"step": 1, "val/loss": loss + 0.5}, {"step": 2, "val/loss": loss}]})
    return root
