"""`fourm-bench selfcheck`: the table of checks runs (on this machine's CPU), names unknown checks, and says so when
asked for a GPU that is not there."""
import pytest
import torch

from benchmarks.selfcheck import cli


def test_checks_run_and_print_a_row_each(tmp_path, capsys):
    assert cli(["--device", "cpu", "--only", "pretrain,generation,tokenizers", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in out if line and line.split()[0] in
            ("pretrain", "generation", "tokenizers")}
    assert rows == {"pretrain": "pass", "generation": "pass", "tokenizers": "pass"}
    assert "3/3 checks passed on CPU" in out[-1]
    assert "tok/s" in next(line for line in out if line.startswith("pretrain"))


def test_bad_requests_are_one_line(tmp_path, capsys):
    assert cli(["--only", "warp_drive", "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown checks ['warp_drive']" in err and "transfer_coco" in err
    assert cli(["--device", "cpu", "--print-config"]) == 0
    assert "transfer_ade20k" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert cli(["--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("fourm-bench selfcheck: --device cuda, but no GPU is visible here")
    else:
        pytest.skip("a GPU is visible: the no-GPU message cannot be shown")
