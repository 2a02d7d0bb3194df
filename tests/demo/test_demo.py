"""The end-to-end demo in its quick size: every stage runs, outputs exist, a rerun redoes nothing."""
import json

from results.demo import run_demo


def test_quick_demo_end_to_end_and_rerun_skips(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    first = run_demo(out, work, size="quick")
    table = (out / "transfer_table.md").read_text()
    assert "4M-demo (pretrained) (ours)" in table and "random init (ours)" in table and "| 4M | B | 84.5 |" in table
    assert (out / "collected.csv").exists() and json.loads((out / "summary.json").read_text())["checkpoints"]
    ckpt_mtime = {p: p.stat().st_mtime_ns for p in (work / "pretrain").rglob("*.safetensors")}
    second = run_demo(out, work, size="quick")
    assert second["checkpoints"] == first["checkpoints"]
    assert {p: p.stat().st_mtime_ns for p in (work / "pretrain").rglob("*.safetensors")} == ckpt_mtime
    assert second["timings_s"]["pretrain"] < first["timings_s"]["pretrain"]
