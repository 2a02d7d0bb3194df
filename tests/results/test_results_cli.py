import json

from fourm.cli import main as fourm_bench
from results.cli import cli


def test_collect_then_table_then_plot(ablation_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert fourm_bench(["results", "collect", str(ablation_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 run folders: 12 done, 0 partial (no DONE), 0 corrupt" in printed
    assert {p.name for p in out.iterdir()} == {"collected.csv", "collected.parquet", "collected.json"}
    assert json.loads((out / "collected.json").read_text())["counts"]["rows"] == 12

    assert cli(["table", "--layout", "ablation", "--in", str(out / "collected.parquet"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 1.0 | **1.850 ± 0.071** | 0.960 ± 0.014 | **1.405 ± 0.042** |" in printed
    assert f"wrote {out / 'table_ablation.md'}" in printed
    assert (out / "table_ablation.tex").read_text().count(r"\textbf{") == 3

    assert cli(["plot", "--bars", "--in", str(out / "collected.parquet"), "--out", str(out)]) == 0
    assert (out / "ablation_bars.png").stat().st_size > 0 and (out / "ablation_bars.pdf").stat().st_size > 0
    assert cli(["plot", "--x", "pretrain.alpha", "--in", str(out / "collected.csv"), "--out", str(out)]) == 0
    assert (out / "scaling_pretrain.alpha_avg_loss.png").exists()


def test_table_from_roots_with_select_best(ablation_root, tmp_path, capsys):
    code = cli(["table", "--layout", "custom", str(ablation_root), "--select", "best", "--by", "val/loss",
                "--index", "pretrain.alpha", "--columns", "transfer.task", "--out", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    assert "select=best:val/loss:min" in captured.err
    assert "| 0.2 | 2.10 ± 0.14 | 1.05 ± 0.07 |" in captured.out


def test_transfer_table_published_only_without_runs(tmp_path, capsys):
    assert cli(["table", "--layout", "transfer", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "table_transfer.md").read_text().startswith("| Method | Size | IN1K top-1 |")


def test_bad_input_is_one_clear_error(ablation_root, tmp_path, capsys):
    assert cli(["table", "--layout", "ablation", str(ablation_root), "--where", "nope=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fourm-bench results table: where: no column 'nope'")
    assert cli(["collect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["table", "--in", str(tmp_path / "x.parquet")]) == 2
    assert cli(["frobnicate"]) == 2
