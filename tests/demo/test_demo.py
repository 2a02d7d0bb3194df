"""The demo as a pipeline of jobs: the tiny recipe end to end on the local launcher, reruns, failures, the full recipe."""
import json
import shutil
from pathlib import Path

import pytest

from ablations.pipeline import PipelineError, RecipeError, describe, expand, load_recipe, run_pipeline
from fourm.runs import Run
from results.report import verdict, verdict_line


@pytest.fixture(scope="package")
def tiny_demo(tmp_path_factory):
    """The tiny demo recipe run once on the local launcher: (work, out, result, summary)."""
    root = tmp_path_factory.mktemp("demo")
    work, out = root / "work", root / "out"
    result = run_pipeline("demo_tiny", work, out, launcher="local")
    return work, out, result, json.loads((out / "summary.json").read_text())


def test_verdict_compares_seed_means_per_task():
    v = verdict({"in1k": {"4M-demo (pretrained)": [48.0, 46.0], "random init": [46.0, 40.0]},
                 "coco": {"4M-demo (pretrained)": [0.01], "random init": [0.02]},
                 "ade20k": {"4M-demo (pretrained)": [30.0]}})  # no random-init run: no verdict
    # in1k: means 47 vs 43, seed stds 1.41 and 4.24: the 4-point gap is inside the larger spread
    assert v["in1k"]["std"] == {"pretrained": pytest.approx(2 ** 0.5), "random init": pytest.approx(18 ** 0.5)}
    assert {k: x for k, x in v["in1k"].items() if k != "std"} == {
        "metric": "top1", "seeds": 2, "pretrained": 47.0, "random init": 43.0, "pretrained_wins": True,
        "beyond_spread": False}
    assert v["coco"] == {"metric": "bbox_mAP", "seeds": 1, "pretrained": 0.01, "random init": 0.02,
                         "pretrained_wins": False, "beyond_spread": None}  # one seed: no spread to compare with
    assert set(v) == {"in1k", "coco"}
    assert verdict_line(v) == ("pretrained beats random init on every task but coco; gaps inside the seed spread "
                               "(not evidence either way): in1k (47 vs 43, seed std 4.2)")
    clear = verdict({"in1k": {"4M-demo (pretrained)": [50.0, 52.0], "random init": [40.0, 41.0]}})
    assert clear["in1k"]["beyond_spread"] is True
    assert verdict_line(clear) == "pretrained beats random init on every task"


def test_tiny_demo_runs_every_stage_as_a_job(tiny_demo):
    work, out, result, summary = tiny_demo
    kinds = [s["kind"] for s in result["stages"]]
    assert kinds == ["world", "text_tokenizer", "tokenizer", "tokenizer", "shards", "random_init", "pretrain",
                     *["transfer"] * 4, "oob", "generate", "report"]
    assert sorted(result["submitted"]) == sorted(Path(s["run_dir"]).name for s in result["stages"])
    # one run folder per job, <work>/<stage>/<run id>, each DONE
    for s in result["stages"]:
        d = Path(s["run_dir"])
        assert d.parent.parent == work.resolve() and Run(d).done, s
    manifest = json.loads((work / "pipeline-local" / "manifest.json").read_text())["runs"]
    by_kind = {s["kind"]: Path(s["run_dir"]).name for s in result["stages"]}
    assert set(manifest[by_kind["pretrain"]]["after"]) == {by_kind["shards"], by_kind["text_tokenizer"]}

    table = (out / "transfer_table.md").read_text()
    assert "4M-demo (pretrained) (ours)" in table and "random init (ours)" in table and "| 4M | B | 84.5 |" in table
    ours = [line for line in table.splitlines() if "(ours) |" in line]
    assert len(ours) == 2 and all(" ± " in line.split("|")[3] for line in ours)  # IN1K: mean ± std over 2 seeds
    # the verdict: seed means of the transfer runs' own metrics.json, pretrained vs random init
    top1 = {}
    for s in result["stages"]:
        if s["kind"] == "transfer":
            cfg = Run(s["run_dir"]).config
            top1.setdefault(cfg["method"], []).append(Run(s["run_dir"]).metrics["top1"])
    v = summary["pretrained_vs_random"]["in1k"]
    assert v["metric"] == "top1" and v["seeds"] == 2
    assert v["pretrained"] == pytest.approx(sum(top1["4M-demo (pretrained)"]) / 2)
    assert v["random init"] == pytest.approx(sum(top1["random init"]) / 2)
    assert summary["checkpoints"]["fm_nano_2e_2d_swiglu_nobias"].startswith(str(work.resolve() / "pretrain"))
    oob_md = (out / "oob_table.md").read_text()
    assert "RGB → depth δ1 (median-scaled)" in oob_md and "RGB → semseg mIoU" in oob_md and "RGB → caption BLEU-4" in oob_md
    from PIL import Image

    assert Image.open(out / "generations.png").size[1] >= 4 * 128  # four validation images, one row each
    assert (out / "report.md").read_text().startswith(table.rstrip("\n")[:40])


def test_rerun_redoes_nothing(tiny_demo):
    work, out, result, _ = tiny_demo
    logs_before = {p: p.read_text() for p in work.rglob("log.jsonl")}
    ckpt_mtime = {p: p.stat().st_mtime_ns for p in work.rglob("*.safetensors")}
    again = run_pipeline("demo_tiny", work, out, launcher="local")
    assert again["submitted"] == []
    assert {p: p.read_text() for p in work.rglob("log.jsonl")} == logs_before  # nothing trained again
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.safetensors")} == ckpt_mtime


def test_changed_settings_reuse_the_unchanged_stages_and_tabulate_only_their_runs(tiny_demo, tmp_path):
    """A changed transfer setting reruns only the transfers (and the report), whose table holds only its own runs."""
    import pandas as pd

    work, _, first, _ = tiny_demo
    out = tmp_path / "out"
    result = run_pipeline("demo_tiny", work, out, launcher="local",
                          sets=["transfer.common=[train.epochs=1,train.lr=3e-3]"])
    kinds = {s["kind"] for s in result["stages"] if Path(s["run_dir"]).name in result["submitted"]}
    assert kinds == {"transfer", "report"}
    assert len([s for s in first["stages"] if s["kind"] == "transfer"]) == 4
    assert len(list((work / "transfer").rglob("DONE"))) >= 8  # both settings' runs are kept...
    in1k = pd.read_csv(out / "collected.csv").query("metric == 'top1'")
    assert len(in1k) == 4 and set(in1k["train.lr"]) == {3e-3} and sorted(in1k["seed"]) == [0, 0, 1, 1]  # ...not mixed


def test_a_bad_override_is_refused_before_any_job(tiny_demo):
    work, out, _, _ = tiny_demo
    with pytest.raises(RecipeError, match=r"transfer\.tasks\.in1k: .*no_such_key"):
        run_pipeline("demo_tiny", work, out, sets=["transfer.common=[train.epochs=1,train.no_such_key=1]"])
    with pytest.raises(RecipeError, match=r"demo_tiny.yaml: key pretrain is missing|pretrain"):
        expand({k: v for k, v in load_recipe("demo_tiny")[1].items() if k != "pretrain"}, work, out,
               Path("demo_tiny.yaml"))
    with pytest.raises(RecipeError, match=r"paper.yaml: data\.layouts, data\.root, data\.splits\.train, "
                                          r"data\.splits\.val, weights\.clip, .* not set; pass --set data\.layouts=<value>"):
        load_recipe("paper")


def test_a_failing_job_names_itself_and_its_log_and_cancels_its_children(tiny_demo, tmp_path):
    work, _, _, _ = tiny_demo
    # 64 > the 24 training images: the tokenizer job fails on the worker, after the checks a recipe can make
    with pytest.raises(PipelineError) as e:
        run_pipeline("demo_tiny", work, tmp_path / "out", launcher="local",
                     sets=["tokenizers.common=[model.image_size=112,model.codebook_size=64,epochs=1,batch_size=64]"])
    msg = str(e.value)
    line = next(x for x in msg.splitlines() if "tokenizer semseg: FAILED" in x)
    log = line.rsplit(" ", 1)[1]
    assert "lower batch_size" in Path(log).read_text()  # the worker's traceback is in the log the message names
    assert "report: CANCELLED" in msg and "pretrain fm_nano_2e_2d_swiglu_nobias: CANCELLED" in msg
    assert "world" not in [x.split(":")[0].strip() for x in msg.splitlines()]  # DONE stages are not listed


def test_results_on_real_run_folders_with_partial_and_corrupt_ones(tiny_demo, tmp_path):
    """collect/table/plot over folders written by real tiny runs, after breaking two of them the ways jobs break."""
    from results.collect import collect
    from results.plots import scaling_plot
    from results.tables import table

    work, _, result, _ = tiny_demo
    transfer_runs = sorted(Path(s["run_dir"]) for s in result["stages"] if s["kind"] == "transfer")
    assert len(transfer_runs) == 4  # in1k: pretrained and random init, 2 seeds each
    partial, corrupt = tmp_path / "store" / "partial", tmp_path / "store" / "corrupt"
    shutil.copytree(transfer_runs[0], partial)
    (partial / "DONE").unlink()
    shutil.copytree(transfer_runs[1], corrupt)
    (corrupt / "metrics.json").write_text('{"top1": 12.')
    coll = collect(*transfer_runs, tmp_path / "store")
    assert [str(p) for p in coll.partial] == [str(partial)]
    assert [str(p) for p, _ in coll.corrupt] == [str(corrupt)]
    assert set(coll.table["run_id"]) == {p.name for p in transfer_runs}
    assert table(coll.table, layout="transfer").markdown.count("(ours)") == 2
    pretrain = [Path(s["run_dir"]) for s in result["stages"] if s["kind"] == "pretrain"]
    plot = scaling_plot(collect(*pretrain).table, x="model_size", y="val/loss", out=tmp_path, name="scaling")
    # the plotted point is the run's own validation loss
    assert len(plot.data) == 1 and plot.data["mean"].iloc[0] == pytest.approx(Run(pretrain[0]).metrics["val/loss"])


def test_full_recipe_expands_with_every_task_resolved(tmp_path):
    """The README demo's settings are only run by `make demo`: its graph and per-task configs are checked here."""
    path, cfg = load_recipe("demo")
    stages = expand(cfg, tmp_path / "work", tmp_path / "out", path)
    kinds = [s.kind for s in stages]
    assert kinds.count("tokenizer") == 3 and kinds.count("pretrain") == 2 and kinds.count("transfer") == 2 * 11
    transfers = [s.job.config for s in stages if s.kind == "transfer"]
    for c in transfers:  # the detector pads to a multiple of 32: COCO trains at 112 rounded up to 128
        assert c["train"]["image_size"] == (128 if c["transfer"]["task"] == "coco" else 112), c["transfer"]["task"]
    coco = next(c for c in transfers if c["transfer"]["task"] == "coco")
    assert coco["mm"]["rpn"]["anchor_scales"] == [4]
    for task in ("ade20k", "nyuv2_semseg_rgbd"):  # linear probes: frozen encoder, no neck, one linear head
        mm = next(c for c in transfers if c["transfer"]["task"] == task)["mm"]
        assert mm["neck"] is None and mm["auxiliary_head"] is None
        assert {k: mm["decode_head"][k] for k in ("type", "in_index", "num_convs")} == {"type": "FCNHead", "in_index": 3,
                                                                                          "num_convs": 0}
    report = stages[-1].job.config
    assert report["linear_probe_tasks"] == ["nyuv2_semseg_rgbd", "ade20k"]
    # the RGB-D task waits for the depth tokenizer it reads; the random-init transfers only for the random init
    rgbd = next(s for s in stages if s.kind == "transfer" and s.job.config["transfer"]["task"] == "nyuv2_semseg_rgbd")
    depth_tok = next(s for s in stages if s.name == "tokenizer depth")
    assert depth_tok.job.run_id in rgbd.job.after
    assert "DONE" not in describe(stages)


def test_paper_recipe_expands_on_given_data_paths(tmp_path, capsys):
    from ablations.pipeline import cli

    sets = ["data.root=/datasets/cc12m_4m", "data.layouts=/datasets", "data.splits.train=1000", "data.splits.val=100",
            "weights.dpt_depth=/w/dpt_depth.safetensors", "weights.dpt_normal=/w/dpt_normal.safetensors",
            "weights.mask2former=/w/mask2former", "weights.vitdet=/w/vitdet_h.safetensors",
            "weights.clip=/w/clip_b16.safetensors", "labels.parts=4", "shards.parts=2"]
    path, cfg = load_recipe("paper", sets)
    stages = expand(cfg, tmp_path / "work", tmp_path / "out", path)
    assert [s.kind for s in stages].count("tokenizer") == 5 and "world" not in [s.kind for s in stages]
    labels = [s for s in stages if s.kind == "labels"]
    # the official 4M-7 labellers, each an array of 4 tasks over both splits, with the given weights
    by_labeler = {}
    for s in labels:
        by_labeler.setdefault(s.job.config["labeler"], []).append(s.job.config)
    assert sorted(by_labeler) == ["clip_features", "dpt_depth", "dpt_normal", "mask2former_semseg", "vitdet_boxes"]
    assert all([c["part"] for c in cs] == [[i, 4] for i in range(4)] for cs in by_labeler.values())
    assert by_labeler["vitdet_boxes"][0]["options"] == {"device": "cuda", "checkpoint": "/w/vitdet_h.safetensors"}
    assert by_labeler["vitdet_boxes"][0]["_cost_s"] == pytest.approx(0.063 * 1100 / 4)
    assert {s.job.resources.gpus_per_node for s in labels} == {1}
    # each tokenizer waits for every task of its modality's labeller
    clip_tok = next(s for s in stages if s.name == "tokenizer clip")
    clip_parts = {Path(s.job.run_dir).name for s in labels if s.job.config["labeler"] == "clip_features"}
    assert clip_parts <= set(clip_tok.job.after) and clip_tok.job.config["modality"]["feature_dim"] == 512
    # token shards: 2 encode tasks, then the job that writes the indexes after both
    shards = [s for s in stages if s.kind == "shards"]
    assert [s.job.config.get("part") for s in shards] == [[0, 2], [1, 2], None]
    assert {Path(s.job.run_dir).name for s in shards[:2]} <= set(shards[2].job.after)
    assert all(s.job.config["_out"] == shards[2].job.run_dir for s in shards[:2])
    pretrain = next(s for s in stages if s.kind == "pretrain")
    assert "tok_clip@224" in pretrain.job.config["model"]["domains_in"] and "tok_clip@224" in pretrain.job.config["model"]["domains_out"]
    assert pretrain.job.resources.gpus_per_node == 8 and pretrain.job.config["budget"]["num_input_tokens"] == 128
    assert Path(shards[2].job.run_dir).name in pretrain.job.after
    # the split's folder of per-modality shards, named before it exists
    assert pretrain.job.config["data"]["train"].endswith("/train") and "/shards/" in pretrain.job.config["data"]["train"]
    assert {s.job.config["data_root"] for s in stages if s.kind == "transfer"} == {"/datasets"}
    assert cli(["paper", "--dry-run", *[a for s in sets for a in ("--set", s)], "--work", str(tmp_path / "w")]) == 0
    printed = capsys.readouterr().out
    assert "40 jobs" in printed and not (tmp_path / "w").exists()
    assert "labels det [array of 4]" in printed and "token shards [array of 2]" in printed
    # GPU-hours: labels and shards from gpu_s_per_image x images, the rest by their reservations
    est = 1100 * (2 * 0.0026 + 0.0087 + 0.063 + 0.0004 + 0.01) / 3600
    assert f"GPU-hours: {est:.2g} estimated for 22 jobs" in printed  # under one hour: two significant digits
    reserved = 6 * 2880 / 60 + 64 * 4320 / 60 + 8 * 8 * 4320 / 60  # 5 tokenizers and the shard indexes: 1 GPU
    assert f"at most {reserved:,.0f} reserved by 15 other jobs" in printed
