"""Every value in docs/recipes.md is what its recipe resolves to: a recipe that drifts from its documented source fails."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
ROW = re.compile(r"^\| (?P<recipe>(pretrain|transfer|label) [^|]+?) \| (?P<key>[\w.]+) \| (?P<value>[^|]+?) \| (?P<source>[^|]+) \|$")


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
