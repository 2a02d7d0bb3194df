"""Every value in docs/recipes.md is what its recipe resolves to: a recipe that drifts from its documented source fails."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
ROW = re.compile(r"^\| (?P<recipe>(pretrain|transfer|label|tokenize) [^|]+?) \| (?P<key>[\w.]+) \| (?P<value>[^|]+?) \| (?P<source>[^|]+) \|$")


def rows() -> list[dict]:
    found = [m.groupdict() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]
    assert len(found) > 20, f"{DOC}: the recipe tables were not found"
    return found


def labeller_recipe(name: str) -> dict:
    """A labeller's settings: its constructor's defaults and the architecture constants it builds with."""
    import inspect

    from fourm.data import dpt, labelers21, mask2former, vitdet, vitdet_modules

    cls = {"dpt_depth": dpt.DPTLabeler, "dpt_normal": dpt.DPTLabeler, "mask2former_semseg": mask2former.Mask2FormerSemseg,
           "vitdet_boxes": vitdet.ViTDetBoxes, "clip_features": labelers21.VitFeatures}[name]
    out = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
           if p.default is not inspect.Parameter.empty}
    if name.startswith("dpt_"):
        with __import__("torch").device("meta"):
            net = dpt.DPTHybrid(1 if name == "dpt_depth" else 3)
        out.update(backbone=net.pretrained.model.default_cfg["architecture"], features=dpt.FEATURES,
                   hooks=list(net.hooks), out_channels=net.scratch.output_conv[4].out_channels,
                   input_mean=dpt.DEPTH_INPUT_MEAN)
    if name == "mask2former_semseg":
        cfg = mask2former.released_config()
        out.update(num_queries=cfg.num_queries, window_size=cfg.backbone_config.window_size)
    if name == "vitdet_boxes":
        cfg = vitdet_modules.cascade_rcnn(80, vitdet_modules.VITDET_H)
        out.update(global_blocks=list(vitdet_modules.VITDET_H["global_blocks"]),
                   window_size=vitdet_modules.VITDET_H["window_size"], test_score_thr=vitdet.TEST_SCORE_THR)
        assert cfg["test_cfg"]["rpn"]["max_per_img"] == out["proposals"]
    return out


@lru_cache(maxsize=None)
def resolved(recipe: str) -> dict:
    words = recipe.split()
    if words[0] == "label":
        return labeller_recipe(words[1])
    if words[0] == "tokenize":  # the official constructor config `tokenize train` writes
        from fourm.tokenizers.train import compose_config
        from fourm.tokenizers.train_official import official_config

        return official_config(compose_config("train", [*words[1:], "data=/datasets", "model=4m"]))
    if words[0] == "pretrain":
        from fourm.pretrain.loop import resolve

        return resolve(words[1:])
    from transfer.run import make_config

    return make_config(words[1], "paper", [*words[2:], "init=random", "data_root=/datasets"])


def lookup(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("row", rows(), ids=lambda r: f"{r['recipe']}:{r['key']}")
def test_recipe_values_equal_the_documented_ones(row):
    assert lookup(resolved(row["recipe"]), row["key"]) == yaml.safe_load(row["value"]), row["source"]


def test_a_checkpoints_own_size_picks_its_transfer_recipe(tmp_path):
    import torch
    from safetensors.torch import save_file

    from transfer.run import make_config

    # the metadata of a 4M-L checkpoint is what decides (its weights are not read)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "l.safetensors"), metadata={"dim": "1024", "encoder_depth": "24"})
    large = make_config("coco", "paper", [f"init={tmp_path / 'l.safetensors'}", "data_root=/datasets"])
    assert large["transfer"]["model"] == "fm_large_24e_24d_swiglu_nobias" and large["train"]["layer_decay"] == 0.8
    forced = make_config("coco", "paper", [f"init={tmp_path / 'l.safetensors'}", "data_root=/datasets", "model=base"])
    assert forced["train"]["layer_decay"] == 0.7  # model= given: it decides
    assert (large["method"], forced["method"]) == ("4M-L", "4M-B")  # a table row says which size it is


@pytest.mark.parametrize("task", ["in1k", "coco", "ade20k", "nyuv2_depth", "nyuv2_semseg_rgbd"])
def test_every_task_has_a_recipe_for_each_released_size(task):
    """L and XL differ from B in every task (no size silently falls back to B's recipe), and the method label follows."""
    from transfer.run import make_config

    b, l, xl = (make_config(task, "paper", [f"model={m}", "init=random", "data_root=/datasets"])
                for m in ("base", "large", "xlarge"))
    assert b["train"]["layer_decay"] < l["train"]["layer_decay"] <= xl["train"]["layer_decay"]
    assert b["train"]["drop_path"] < l["train"]["drop_path"] < xl["train"]["drop_path"]
    if b["method"] is None:  # no label: tables name the row by init and the config's size
        assert l["method"] is None and xl["method"] is None
    else:
        assert [c["method"].split()[0] for c in (b, l, xl)] == ["4M-B", "4M-L", "4M-XL"]
    named = make_config(task, "paper", ["model=large", "method=mine", "init=random", "data_root=/datasets"])
    assert named["method"] == "mine"


def test_large_heads_read_the_blocks_of_their_references():
    """A 24-block encoder's feature blocks, scaled from B's: mmseg's ViT-L UperNet (BEiT-L: 7/11/15/23) and DPT's
    ViT-L hooks (5/11/17/23)."""
    from transfer.mmseg_modules import scaled_out_indices
    from transfer.run import make_config

    ade = make_config("ade20k", "paper", ["model=large", "init=random", "data_root=/datasets"])
    nyu = make_config("nyuv2_depth", "paper", ["model=large", "init=random", "data_root=/datasets"])
    assert scaled_out_indices(24, ade["mm"]["out_indices"]) == [7, 11, 15, 23]
    assert scaled_out_indices(24, nyu["mm"]["out_indices"]) == [5, 11, 17, 23]
