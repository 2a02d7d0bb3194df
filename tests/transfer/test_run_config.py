"""The transfer command: config resolution, overrides, errors, run folders, skip-if-DONE."""
from __future__ import annotations

import pytest
import yaml

from fourm.runs import run_id
from transfer import run as transfer_run
from transfer.configs import ConfigError, model_size, resolve

BASE = {"init": "random", "data_root": "/tmp/somewhere"}


def test_paper_in1k_is_the_4m_b_recipe():
    c = resolve("in1k", "paper", BASE)
    t = c["train"]
    assert c["transfer"] == {"task": "in1k", "init": "random", "model": "fm_base_12e_12d_swiglu_nobias", "profile": "paper", "protocol": "finetune"}
    assert (t["epochs"], t["warmup_epochs"], t["batch_size"], t["blr"]) == (100, 5, 1024, 5e-4)
    assert (t["layer_decay"], t["weight_decay"], t["drop_path"]) == (0.65, 0.05, 0.1)
    assert t["betas"] == [0.9, 0.999] and t["image_size"] == 224 and t["lr"] is None
    assert (t["mixup"], t["cutmix"], t["smoothing"], t["auto_augment"]) == (0.8, 1.0, 0.1, "rand-m9-mstd0.5-inc1")
    assert c["data"]["num_classes"] == 1000
    assert "size_recipes" not in c


def test_large_encoder_gets_the_4m_l_recipe_but_explicit_overrides_win():
    c = resolve("in1k", "paper", {**BASE, "model": "fm_large_24e_24d_swiglu_nobias"})
    t = c["train"]
    assert (t["epochs"], t["blr"], t["layer_decay"], t["drop_path"]) == (50, 1e-3, 0.75, 0.2)
    assert (t["weight_decay"], t["warmup_epochs"], t["batch_size"]) == (0.05, 5, 1024)
    c = resolve("in1k", "paper", [*(f"{k}={v}" for k, v in BASE.items()), "model=fm_large_24e_24d_swiglu_nobias",
                                  "train.layer_decay=0.8"])
    assert c["train"]["layer_decay"] == 0.8 and c["train"]["epochs"] == 50
    assert model_size("fm_large_24e_24d_swiglu_nobias") == "large" and model_size("vit_b") is None


def test_overrides_are_typed_and_shortcuts_verbatim(tmp_path):
    c = resolve("in1k", "tiny", ["init=random", f"data_root={tmp_path}", "train.epochs=7", "train.betas=[0.9,0.95]",
                                 "method=4M-B (ours, 2 seeds)", "seed=3", f"runs_root={tmp_path / 'r'}"])
    assert c["train"]["epochs"] == 7 and c["train"]["betas"] == [0.9, 0.95] and c["seed"] == 3
    assert c["method"] == "4M-B (ours, 2 seeds)" and c["data_root"] == str(tmp_path)
    assert c["_runs_root"] == str(tmp_path / "r")


def test_runs_root_and_runtime_do_not_change_the_run_id():
    a = resolve("in1k", "tiny", {**BASE, "runs_root": "/a"})
    b = resolve("in1k", "tiny", {**BASE, "runs_root": "/b", "_runtime.num_workers": 4})
    c = resolve("in1k", "tiny", {**BASE, "train.epochs": 4})
    assert b["_runtime"]["num_workers"] == 4
    assert run_id(a) == run_id(b) != run_id(c)


@pytest.mark.parametrize("overrides, needle", [
    ({"train.epoch": 3}, "unknown override key 'train.epoch'"),
    ({"train.epochs": "many"}, "train.epochs is a int"),
    ({"init": None}, "transfer.init is not set"),
    ({"data_root": None}, "data_root is not set"),
])
def test_bad_overrides_give_one_error_naming_file_and_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        resolve("in1k", "tiny", {**BASE, **overrides})
    assert needle in str(e.value) and "in1k/tiny.yaml" in str(e.value)


def test_unknown_task_and_profile():
    with pytest.raises(ConfigError, match="unknown transfer task 'cifar'"):
        transfer_run.make_config("cifar", "tiny", BASE)
    with pytest.raises(ConfigError, match="unknown transfer profile 'huge'"):
        transfer_run.make_config("in1k", "huge", BASE)


def test_cli_errors_are_one_line_with_exit_code_2(capsys):
    assert transfer_run.cli(["task=in1k", "profile=tiny", "init=random", "data_root=/x", "train.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lrr" in err and "+train.lrr=1" in err
    assert transfer_run.cli(["profile=tiny"]) == 2
    assert "missing task=" in capsys.readouterr().err
    assert transfer_run.cli(["task=in1k", "--dry"]) == 2


def test_cli_print_config_shows_the_run_id_and_resolved_yaml(capsys, tmp_path):
    assert transfer_run.cli(["task=in1k", "profile=tiny", "init=random", f"data_root={tmp_path}", "--print-config"]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    cfg = yaml.safe_load(rest)
    assert first == f"# run id {run_id(cfg)}" and cfg["train"]["image_size"] == 64


def test_every_task_module_is_registered():
    from transfer.tasks import get_task, tasks

    assert set(tasks()) == {"in1k", "ade20k", "nyuv2_depth", "coco", "nyuv2_semseg_rgbd"}
    assert get_task("in1k").module == "transfer.classification"


def test_done_runs_are_skipped_and_unfinished_ones_run(tmp_path, monkeypatch):
    import transfer.classification as cls

    calls = []

    def fake_run(config, run):  # stands in for training: the dispatcher's contract is what is tested here
        calls.append(run.id)
        run.log(step=1, loss=1.0)
        return {"top1": 50.0, "top5": 100.0, "val_loss": 0.5}

    monkeypatch.setattr(cls, "run", fake_run)
    cfg = resolve("in1k", "tiny", {**BASE, "runs_root": str(tmp_path)})
    r = transfer_run.run_transfer(cfg)
    assert r.done and r.metrics == {"top1": 50.0, "top5": 100.0, "val_loss": 0.5} and calls == [r.id]
    assert r.path.parent == tmp_path and r.config["train"] == cfg["train"]
    again = transfer_run.run_transfer(cfg)
    assert again.path == r.path and calls == [r.id]  # not run twice
    assert [rec.get("event") for rec in r.read_log()].count("done") == 1


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("task", ["in1k", "ade20k", "nyuv2_depth", "coco", "nyuv2_semseg_rgbd"])
def test_tiny_profile_is_the_paper_recipe_plus_the_keys_it_names(task):
    """tiny.yaml composes paper.yaml (hydra defaults) and names only what it changes: the resolved configs differ
    exactly in those keys, so a test of the tiny profile runs the paper recipe's code path."""
    import yaml

    from transfer.configs import CONFIG_DIR, resolve

    tiny_file = yaml.safe_load((CONFIG_DIR / task / "tiny.yaml").read_text())
    assert tiny_file["defaults"] == ["paper", "_self_"]
    named = set(_flat({k: v for k, v in tiny_file.items() if k != "defaults"}))
    args = {"init": "random", "data_root": "/tmp", "model": "fm_nano_2e_2d_swiglu_nobias"}
    paper, tiny = _flat(resolve(task, "paper", args)), _flat(resolve(task, "tiny", args))
    differ = {k for k in set(paper) | set(tiny) if paper.get(k, "<absent>") != tiny.get(k, "<absent>")}
    differ -= {"transfer.model"}  # given on the command line to both
    assert differ <= named, f"{task}: tiny differs from paper in keys it does not name: {sorted(differ - named)}"
    assert differ, f"{task}: the tiny profile changes nothing"


def test_registered_hardware_and_batch_agree_with_each_tasks_paper_recipe():
    from transfer.tasks import tasks

    for name, task in tasks().items():
        cfg = transfer_run.make_config(name, "paper", ["init=random", "data_root=/datasets"])
        assert cfg["_runtime"]["reference_gpus"] == task.reference_gpus, name
        assert cfg["train"]["batch_size"] == task.global_batch, name
