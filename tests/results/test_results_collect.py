import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from fourm.runs import find_run_paths, find_runs
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


def _walk_runs(*roots):
    """The os.walk scan find_runs had before it used os.scandir: the reference for its semantics."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if "config.yaml" in filenames:
                found.append(str(Path(dirpath)))
                dirnames[:] = []
    return sorted(found)


def test_find_runs_matches_os_walk(tmp_path, monkeypatch):
    def run(p, cfg=True):
        p.mkdir(parents=True, exist_ok=True)
        if cfg:
            (p / "config.yaml").write_text("a: 1\n")

    r = tmp_path / "r"
    for name in ("a", "b", "g1/c", "g1/g2/d", "g1/c/nested", "sp ace/x y", "ü/é"):
        run(r / name)  # g1/c/nested is inside a run folder: run folders do not nest
    run(r / "empty", cfg=False)
    run(r / "cfgdir/config.yaml/inner")  # a folder named config.yaml is not a run's config
    run(r / "broken", cfg=False)
    (r / "broken/config.yaml").symlink_to(tmp_path / "nowhere")  # os.walk lists a broken link as a file
    run(r / "linked", cfg=False)
    (tmp_path / "target.yaml").write_text("a: 1\n")
    (r / "linked/config.yaml").symlink_to(tmp_path / "target.yaml")
    run(tmp_path / "outside/e")
    (r / "link_to_run").symlink_to(tmp_path / "outside/e")  # links to folders are not followed
    (r / "link_to_group").symlink_to(tmp_path / "outside")
    (r / "file.txt").write_text("x")
    run(tmp_path / "solo")  # a root that is itself a run
    monkeypatch.chdir(tmp_path)
    for roots in [("r",), ("r/",), ("./r",), ("r/.",), (str(r),), (".",), ("solo",), ("./solo/",), ("r", "r"),
                  ("solo", "r"), ("missing",), ("r/file.txt",), ("r/g1/..",), ("r//g1",)]:
        expected = _walk_runs(*roots)
        assert find_run_paths(*roots) == expected, roots
        runs = find_runs(*roots)
        assert [str(x.path) for x in runs] == expected, roots
        assert [x.id for x in runs] == [Path(p).name for p in expected]
    assert find_run_paths("r") == [f"r/{n}" for n in ("a", "b", "broken", "cfgdir/config.yaml/inner", "g1/c", "g1/g2/d",
                                                     "linked", "sp ace/x y", "ü/é")]


def test_collect_reads_files_like_open(tmp_path):
    evals = [{"step": i, "v": i} for i in range(9000)]
    finished(tmp_path, {"seed": 0, "note": "x" * 200_000}, {"m": 1.0, "evals": evals})
    bom = finished(tmp_path, {"seed": 1}, {"m": 0.0})
    (bom.path / "metrics.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"m": 2.0}).encode())  # json.loads accepts it
    folder = finished(tmp_path, {"seed": 2}, {"m": 3.0})
    (folder.path / "metrics.json").unlink()
    (folder.path / "metrics.json").mkdir()
    c = collect(tmp_path)
    by_seed = {s: dict(zip(g["metric"], g["value"])) for s, g in c.table.groupby("seed")}
    assert by_seed[0] == {"m": 1.0, "v": 8999.0} and by_seed[1] == {"m": 2.0}
    assert (c.table.loc[c.table["seed"] == 0, "note"] == "x" * 200_000).all()  # a file over one read's chunk
    reasons = dict(c.corrupt)
    assert reasons == {str(folder.path): f"[Errno 21] Is a directory: '{folder.path / 'metrics.json'}'"}


def test_many_folders_are_read_in_parallel_with_the_same_result(transfer_root, monkeypatch):
    root, _ = transfer_root
    """Above PARALLEL_FROM folders collect splits them over processes; the table and listings are unchanged."""
    import results.collect as rc

    serial = collect(root)
    monkeypatch.setattr(rc, "PARALLEL_FROM", 1)
    monkeypatch.setattr(rc.os, "cpu_count", lambda: 2)
    parallel = collect(root)
    pd.testing.assert_frame_equal(parallel.table, serial.table)
    assert (parallel.partial, parallel.corrupt, parallel.counts) == (serial.partial, serial.corrupt, serial.counts)
