"""Grid specs: expansion (product, zip, restrictions, params), validation of every point, and the planned runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from ablations.grid import GridError, grid_names, hydra_value, load_grid, expand
from ablations.plan import final_checkpoint, plan
from ablations.resolve import PretrainResolver
from fourm.pretrain.loop import resolve, total_steps
from fourm.runs import run_id

PAPER_PARAMS = ["params.train_shards=/data/cc12m/train-{000000..001199}.tar",
                "params.val_shards=/data/cc12m/val-000000.tar",
                "params.text_tokenizer=/data/text_tokenizer.json", "params.data_root=/datasets"]


def sets_for(name: str) -> list[str]:
    """The params a shipped grid needs (paths need not exist to plan)."""
    grid = load_grid(name)
    return [s for s in PAPER_PARAMS + ["params.shards_dir=/data/cc12m", "params.ckpt_b=/w/4M-7_B.safetensors",
                                       "params.ckpt_l=/w/4M-7_L.safetensors", "params.ckpt=/w/4M-7_B.safetensors"] if s.split("=")[0][7:] in grid.params]


def write_grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


GRID = """
name: toy
params: {data_root: /datasets}
base: {model: nano, batch_size: 4}
evaluate: {profile: tiny, tasks: [in1k], seeds: [0, 1], overrides: {data_root: "${params.data_root}"}}
grid:
  product:
    - {axis: alphas, key: alphas.spec, values: [mod7_all2all_a0.1, mod7_all2all_a0.5, mod7_all2all_a1.0]}
    - zip:
        - {axis: inp, key: budget.num_input_tokens, values: [16, 32]}
        - {axis: tgt, key: budget.num_target_tokens, values: [24, 48]}
"""


def test_product_zip_restrictions_and_sets(tmp_path):
    path = write_grid(tmp_path, GRID)
    points = expand(load_grid(path))
    assert len(points) == 6
    assert points[0].name == "alphas=mod7_all2all_a0.1,inp=16,tgt=24"
    assert dict(points[-1].overrides) == {"model": "nano", "batch_size": 4, "alphas.spec": "mod7_all2all_a1.0",
                                          "budget.num_input_tokens": 32, "budget.num_target_tokens": 48}
    few = expand(load_grid(path, ["only.alphas=mod7_all2all_a0.5", "batch_size=8", "evaluate.seeds=[3]"]))
    assert [p.name for p in few] == ["alphas=mod7_all2all_a0.5,inp=16,tgt=24", "alphas=mod7_all2all_a0.5,inp=32,tgt=48"]
    assert all(dict(p.overrides)["batch_size"] == "8" for p in few)  # --set wins over base and points
    with pytest.raises(GridError, match="zip of axes with different lengths"):
        expand(load_grid(path, ["only.inp=16"]))
    with pytest.raises(GridError, match=r"only\.nope: no such axis"):
        expand(load_grid(path, ["only.nope=1"]))
    with pytest.raises(GridError, match="not labels of axis 'alphas'"):
        expand(load_grid(path, ["only.alphas=a9"]))


def test_runs_depend_on_their_pretraining_and_ids_are_stable(tmp_path):
    grid = load_grid(write_grid(tmp_path, GRID))
    runs = plan(grid, tmp_path / "runs", progress=False)
    pre = [r for r in runs if r.kind == "pretrain"]
    tra = [r for r in runs if r.kind == "transfer"]
    assert len(pre) == 6 and len(tra) == 12  # 6 points x 1 task x 2 seeds
    by_id = {r.run_id: r for r in pre}
    for t in tra:
        parent = by_id[t.after[0]]
        assert t.config["transfer"]["init"] == str(final_checkpoint(parent.run_dir, parent.config))
        assert t.config["transfer"]["init"].endswith(f"step-{total_steps(parent.config):06d}/model.safetensors")
        assert t.config["transfer"]["model"] == "fm_nano_2e_2d_swiglu_nobias"
        assert t.run_dir == str((tmp_path / "runs" / "transfer" / t.run_id).resolve())
        assert t.run_id == run_id(t.config)
    assert sorted(t.config["seed"] for t in tra) == [0] * 6 + [1] * 6
    assert [r.run_id for r in plan(load_grid(write_grid(tmp_path, GRID)), tmp_path / "runs", progress=False)] == \
        [r.run_id for r in runs]
    # the pretraining config is what `fourm-bench pretrain` resolves from the same overrides
    cfg = resolve(["model=nano", "batch_size=4", "alphas.spec=mod7_all2all_a0.1", "budget.num_input_tokens=16",
                   "budget.num_target_tokens=24"])
    from fourm.runs import identity

    assert identity(pre[0].config) == identity(cfg)
    assert pre[0].tokens == total_steps(cfg) * 4 * (16 + 24)


@pytest.mark.parametrize("name", grid_names())
def test_shipped_grids_validate(name, tmp_path):
    grid = load_grid(name, sets_for(name))
    runs = plan(grid, tmp_path, progress=False)
    pre = [r for r in runs if r.kind == "pretrain"]
    tra = [r for r in runs if r.kind == "transfer"]
    expected = {"modalities": (5, 20), "alphas": (8, 32), "budgets": (16, 64), "scaling_model": (4, 16),
                "scaling_data": (4, 16), "scaling_tokens": (4, 16), "paper_transfer": (0, 8), "tiny": (2, 2), "lowshot": (0, 12)}
    assert (len(pre), len(tra)) == expected[name]
    assert len({r.run_id for r in runs}) == len(runs)


def test_fast_resolver_matches_hydra_on_shipped_grids():
    resolver = PretrainResolver()
    for name in ("modalities", "budgets", "scaling_model", "scaling_data", "tiny"):
        grid = load_grid(name, sets_for(name) if name != "tiny" else
                         ["params.train_shards=/t/{0..1}.tar", "params.val_shards=/v.tar",
                          "params.text_tokenizer=/t.json", "params.data_root=/d"])
        for point in expand(grid)[:3]:
            texts = {k: hydra_value(v) for k, v in point.overrides}
            assert resolver(texts) == resolve([f"{k}={v}" for k, v in texts.items()]), (name, point.name)


def test_paper_transfer_grid_reproduces_the_main_table(tmp_path):
    runs = plan(load_grid("paper_transfer", sets_for("paper_transfer")), tmp_path, progress=False)
    table = sorted((r.config["method"], r.task, r.config["transfer"]["model"], r.config["transfer"]["init"])
                   for r in runs)
    tasks = ["ade20k", "coco", "in1k", "nyuv2_depth"]
    assert table == [("4M-B", t, "fm_base_12e_12d_swiglu_nobias", "/w/4M-7_B.safetensors") for t in tasks] + \
                    [("4M-L", t, "fm_large_24e_24d_swiglu_nobias", "/w/4M-7_L.safetensors") for t in tasks]
    assert all(r.profile == "paper" and not r.after for r in runs)
    in1k_l = next(r for r in runs if r.task == "in1k" and r.config["method"] == "4M-L")
    assert in1k_l.config["train"]["epochs"] == 50  # the L size recipe of the paper protocol


@pytest.mark.parametrize("sets, key", [
    (["alphas.spec=mod7_rgb2all_a0.5", "model.domains_in=[tok_rgb@224,tok_depth@224]"], "key alphas"),
    (["budget.num_input_tokens=100000"], "key budget.num_input_tokens"),
    (["model.domains_out=[tok_depth@224,tok_nope@224]"], "key model.domains_out"),
    (["model.domains_out=[rgb@224]"], "key model.domains_out"),
    (["model=huge"], "key model"),
    (["budget.num_inputs=3"], "key budget.num_inputs"),
    (["evaluate.tasks=[in1k,imagenet22k]"], "imagenet22k"),
    (["evaluate.train.epochz=3"], "train.epochz"),
])
def test_a_bad_point_is_one_error_naming_point_and_key(tmp_path, sets, key):
    path = write_grid(tmp_path, GRID)
    with pytest.raises(GridError) as err:
        plan(load_grid(path, ["only.alphas=mod7_all2all_a0.5", *sets]), tmp_path / "runs", progress=False)
    assert key in str(err.value) and "grid 'toy'" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_alphas_missing_a_modality_is_caught_before_submission(tmp_path):
    alphas = tmp_path / "no_det.yaml"
    alphas.write_text("\n".join(f"{m}: {{input_alphas: [0.5], target_alphas: [{0 if m == 'rgb@224' else 0.5}]}}"
                                for m in ["rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224",
                                          "caption"]))
    with pytest.raises(GridError, match=r"alphas=mod7_all2all_a0\.1.*key alphas.*no alphas for modalities \['det'\]"):
        plan(load_grid(write_grid(tmp_path, GRID), [f"alphas.spec={alphas}"]), tmp_path / "r", progress=False)


def test_a_task_config_that_does_not_resolve_stops_the_plan(tmp_path):
    match = (r"point alphas=mod7_all2all_a0.1,inp=16,tgt=24, evaluate in1k seed 0: "
             r".*paper.yaml: unknown override key 'train.nope'")
    with pytest.raises(GridError, match=match):
        plan(load_grid(write_grid(tmp_path, GRID.replace("profile: tiny", "profile: paper")),
                       ["only.alphas=mod7_all2all_a0.1", "evaluate.train.nope=1"]), tmp_path, progress=False)


def test_unset_params_and_unknown_grids(tmp_path):
    with pytest.raises(GridError, match=r"params\.ckpt_b is not set; pass --set params\.ckpt_b=VALUE"):
        plan(load_grid("paper_transfer", ["params.data_root=/d"]), tmp_path, progress=False)
    with pytest.raises(GridError, match="shipped grids"):
        load_grid("nonexistent_grid")
    with pytest.raises(GridError, match="no such parameter"):
        load_grid("tiny", ["params.nope=1"])


def test_protocols_multiply_the_evaluations(tmp_path):
    sets = sets_for("paper_transfer") + ["protocol=[linear,lora]"]
    runs = plan(load_grid("paper_transfer", sets), tmp_path, progress=False)
    assert len(runs) == 16 and sorted({r.config["transfer"]["protocol"] for r in runs}) == ["linear", "lora"]
    assert all(("lora" in r.config) == (r.config["transfer"]["protocol"] == "lora") for r in runs)
    with pytest.raises(GridError, match="protocol knn.*takes protocol=finetune\\|linear\\|lora"):
        plan(load_grid("paper_transfer", sets_for("paper_transfer") + ["protocol=[knn]"]), tmp_path, progress=False)
