"""The run store: ids, atomic files, reopening without losing what a run recorded."""
import json

import pytest

from fourm import runs


def test_run_id_hashes_config_but_not_bookkeeping():
    a = runs.run_id({"lr": 1e-3, "model": {"name": "x"}, "_runs_root": "/a"})
    assert a == runs.run_id({"model": {"name": "x"}, "lr": 1e-3, "_runs_root": "/b"})
    assert a != runs.run_id({"lr": 2e-3, "model": {"name": "x"}})
    assert len(a) == runs.ID_LENGTH


def test_reopening_keeps_env_and_refuses_a_different_config(tmp_path):
    cfg = {"task": "t", "seed": 0}
    run = runs.open_run(tmp_path, cfg)
    first_env = (run.path / "env.json").read_text()
    run.write_metrics({"acc": 1.0})
    run.mark_done()
    again = runs.open_run(tmp_path, cfg)
    assert again.path == run.path and (run.path / "env.json").read_text() == first_env and again.done
    (run.path / "config.yaml").write_text("task: other\nseed: 0\n")
    with pytest.raises(RuntimeError, match="different config"):
        runs.open_run(tmp_path, cfg)


def test_resumed_run_logs_where_it_reopened(tmp_path):
    run = runs.open_run(tmp_path, {"a": 1})
    runs.open_run(tmp_path, {"a": 1})
    assert [r["event"] for r in run.read_log()] == ["reopen"]


def test_done_needs_metrics_and_torn_log_lines_are_skipped(tmp_path):
    run = runs.open_run(tmp_path, {"a": 2})
    with pytest.raises(RuntimeError, match="metrics.json"):
        run.mark_done()
    run.log(step=1, loss=2.0)
    with open(run.path / "log.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a writer killed mid-line
    assert run.read_log() == [{**run.read_log()[0]}] and run.read_log()[0]["loss"] == 2.0
    assert not any(p.name.endswith(".tmp") for p in run.path.iterdir())
    assert json.loads((run.path / "env.json").read_text())["python"]


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from fourm.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "table.md", "| a |\n")
        (tmp_path / "plain.md").write_text("| a |\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "table.md").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.md").stat().st_mode) == 0o644  # readable by others, as reports are


def test_one_identity_rule_and_config_json_beside_config_yaml(tmp_path):
    import json

    import yaml

    from fourm.runs import identity, open_run, run_id

    cfg = {"model": {"size": "B", "_note": "nested keys are identity"}, "seed": 1, "_runs_root": "/x", "_resume": "auto"}
    assert identity(cfg) == {"model": {"size": "B", "_note": "nested keys are identity"}, "seed": 1}
    assert run_id(cfg) == run_id(identity(cfg)) != run_id({**identity(cfg), "seed": 2})
    run = open_run(tmp_path, cfg)
    assert json.loads((run.path / "config.json").read_text()) == yaml.safe_load((run.path / "config.yaml").read_text()) == cfg
    assert run.config == cfg
    (run.path / "config.json").unlink()  # a folder written without it gets it on reopening
    open_run(tmp_path, cfg)
    assert json.loads((run.path / "config.json").read_text()) == cfg
