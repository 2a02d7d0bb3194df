import json
import math

import pandas as pd
import pytest

from fourm.runs import open_run
from results.collect import Selection, collect, default_direction, flatten_config, load_collected

from results_testdata import TRANSFER_RUNS, finished


def test_counts_partial_and_corrupt_listed_with_reasons(transfer_root):
    root, broken = transfer_root
    c = collect(root)
    done = len(TRANSFER_RUNS) + 2  # + random init + nyuv2_semseg_rgbd
    assert c.counts["done"] == done
    assert c.counts["partial"] == 1 and c.partial == [str(broken["partial"])]
    reasons = dict(c.corrupt)
    assert set(reasons) == {str(broken[k]) for k in ("bad_metrics", "no_metrics", "bad_config")}
    assert "metrics.json does not parse" in reasons[str(broken["bad_metrics"])]
    assert reasons[str(broken["no_metrics"])] == "DONE but no metrics.json"
    assert "config.yaml does not parse" in reasons[str(broken["bad_config"])]
    assert c.counts["runs"] == done + 1 + 3
    # nothing from a partial or corrupt folder is in the table
    bad_ids = {p.name for p in broken.values()}
    assert not bad_ids & set(c.table["run_id"])
    assert c.table["run_id"].nunique() == done


def test_long_table_rows_and_flattening(transfer_root):
    root, _ = transfer_root
    t = collect(root).table
    for col in ("run_id", "metric", "value", "source", "select", "model.size", "model.name", "transfer.task",
                "transfer.init", "seed", "method", "env.git_sha", "env.torch"):
        assert col in t.columns, col
    coco = t[(t["transfer.task"] == "coco") & (t["seed"] == 1)]
    got = dict(zip(coco["metric"], coco["value"]))
    assert got == {"coco/bbox_mAP": 0.496, "coco/segm_mAP": 0.427, "coco/bbox_mAP_50": 0.71}
    # one row per run x metric
    expected_rows = sum(len(flat) for flat in (_flat(m) for m in TRANSFER_RUNS.values())) + 2
    assert len(t) == expected_rows
    assert (t["select"] == "final").all()  # no evals anywhere in this root
    assert t["seed"].dtype.kind == "i"


def _flat(m, prefix=""):
    out = {}
    for k, v in m.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_save_csv_parquet_json_roundtrip(transfer_root, tmp_path):
    root, _ = transfer_root
    c = collect(root)
    paths = c.save(tmp_path)
    pq = load_collected(paths["parquet"])
    csv = load_collected(paths["csv"])
    key = ["run_id", "metric"]
    a = c.table.sort_values(key).reset_index(drop=True)
    for back in (pq, csv):
        b = back.sort_values(key).reset_index(drop=True)
        assert list(b["value"]) == list(a["value"])
        assert list(b["transfer.task"].astype(str)) == list(a["transfer.task"].astype(str))
    summary = json.loads(paths["json"].read_text())
    assert summary["counts"]["corrupt"] == 3 and summary["counts"]["partial"] == 1
    assert summary["select"] == "last"
    assert pq.attrs["select"] == "last" and pq.attrs["done"] == c.done
    assert not list(tmp_path.glob(".*tmp"))


def test_selection_last_vs_best(tmp_path):
    evals = [{"step": 10, "val/loss": 0.9, "top1": 70.0}, {"step": 20, "val/loss": 0.5, "top1": 80.0},
             {"step": 30, "val/loss": 0.7, "top1": 78.0}]
    finished(tmp_path, {"transfer": {"task": "in1k"}, "seed": 0}, {"evals": evals, "top1": 78.0, "epochs": 3})
    finished(tmp_path, {"transfer": {"task": "in1k"}, "seed": 1}, {"evals": [{"step": 5, "top1": 1.0}]})

    last = collect(tmp_path, select="last").table
    s0 = last[last["seed"] == 0]
    assert dict(zip(s0["metric"], s0["value"])) == {"val/loss": 0.7, "top1": 78.0, "epochs": 3.0}
    assert (s0["eval_step"] == 30).all() and (s0["select"] == "last").all()
    assert dict(zip(s0["metric"], s0["source"])) == {"val/loss": "eval", "top1": "eval", "epochs": "final"}

    best = collect(tmp_path, select="best", by="val/loss")
    b0 = best.table[best.table["seed"] == 0]
    assert dict(zip(b0["metric"], b0["value"])) == {"val/loss": 0.5, "top1": 80.0, "epochs": 3.0}
    assert (b0["eval_step"] == 20).all() and (b0["select"] == "best:val/loss:min").all()
    # a run that never reported the selection metric falls back to its last eval, and says so
    b1 = best.table[best.table["seed"] == 1]
    assert (b1["select"] == "last(no val/loss)").all() and len(best.fallbacks) == 1

    by_acc = collect(tmp_path, select="best:top1").table  # max inferred for an accuracy
    assert by_acc[(by_acc["seed"] == 0) & (by_acc["metric"] == "top1")]["value"].item() == 80.0
    assert collect(tmp_path, select="best:top1:min").table.query("seed == 0 and metric == 'top1'")["value"].item() == 70.0


def test_selection_parse_errors_and_directions():
    assert str(Selection.parse("best:val/loss")) == "best:val/loss:min"
    assert str(Selection.parse("best", by="val/mIoU")) == "best:val/mIoU:max"
    for bad in ("first", "best", "best:x:up", "last:val/loss"):
        with pytest.raises(ValueError):
            Selection.parse(bad)
    assert [default_direction(m) for m in ("val/loss", "abs_rel", "top1", "coco/bbox_mAP", "delta1")] == \
        ["min", "min", "max", "max", "max"]


def test_ties_go_to_later_eval_and_nan_is_skipped():
    s = Selection.parse("best:val/loss")
    evals = [{"step": 1, "val/loss": 0.5}, {"step": 2, "val/loss": float("nan")}, {"step": 3, "val/loss": 0.5}]
    assert s.choose(evals) == (2, "best:val/loss:min")


def test_flatten_config_and_mixed_types(tmp_path):
    assert flatten_config({"a": {"b": {"c": 1}}, "l": ["x", "y"], "e": {}}) == {"a.b.c": 1, "l": '["x","y"]', "e": "{}"}
    finished(tmp_path, {"k": 3, "seed": 0}, {"m": 1.0})
    finished(tmp_path, {"k": "three", "seed": 1}, {"m": 2.0})
    c = collect(tmp_path)
    assert sorted(c.table["k"].astype(str)) == ["3", "three"]
    c.save(tmp_path / "out")  # parquet accepts the harmonised column


def test_collect_error_on_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect(tmp_path / "nope")


def test_nan_metric_is_kept_as_a_result(tmp_path):
    finished(tmp_path, {"seed": 0}, {"loss": float("nan")})
    t = collect(tmp_path).table
    assert len(t) == 1 and math.isnan(t["value"].item())


def test_unreadable_env_keeps_the_run(tmp_path):
    run = finished(tmp_path, {"seed": 0}, {"loss": 1.0})
    (run.path / "env.json").write_text("[")
    c = collect(tmp_path)
    assert c.done == 1 and len(c.warnings) == 1 and "env.json" in c.warnings[0]
