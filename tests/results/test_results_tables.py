import math
from pathlib import Path

import pytest

from results.collect import collect
from results.tables import (ablation_table, custom_table, lookup_metric, published_transfer, size_from_name, split_size,
                            table, transfer_table)
from results_testdata import finished, transfer_config

EXPECTED_PUBLISHED = Path(__file__).parent / "expected_transfer_published.md"


@pytest.fixture(scope="module")
def transfer_df(transfer_root):
    return collect(transfer_root[0]).table


@pytest.fixture(scope="module")
def ablation_df(ablation_root):
    return collect(ablation_root).table


def test_published_only_transfer_table_matches_expected_file_exactly():
    assert table(None, "transfer").markdown == EXPECTED_PUBLISHED.read_text()


def test_published_csv_numbers():
    pub = published_transfer()
    assert len(pub) == 9
    row = pub[(pub["method"] == "4M") & (pub["size"] == "B")].iloc[0]
    assert [row[k] for k in ("in1k_top1", "coco_ap_box", "coco_ap_mask", "ade20k_miou", "nyuv2_delta1")] == \
        [84.5, 49.7, 42.7, 50.1, 92.0]


def test_transfer_table_mean_std_over_seeds_and_delta(transfer_df):
    r = transfer_table(transfer_df)
    f = r.frame
    ours = f[(f["kind"] == "ours") & (f["method"] == "4M")].iloc[0]
    assert ours["in1k_top1"] == pytest.approx(84.2) and ours["in1k_top1_std"] == pytest.approx(math.sqrt(0.08))
    assert ours["in1k_top1_n"] == 2
    # fractions in the run store are shown in percent
    assert ours["coco_ap_box"] == pytest.approx(49.3) and ours["coco_ap_box_std"] == pytest.approx(0.6 / math.sqrt(2))
    assert ours["coco_ap_mask"] == pytest.approx(42.6)
    assert ours["ade20k_miou"] == pytest.approx(50.0)
    assert ours["nyuv2_delta1"] == pytest.approx(92.0)
    delta = f[f["method"] == "Δ vs published 4M"].iloc[0]
    assert [round(delta[k], 6) for k in ("in1k_top1", "coco_ap_box", "coco_ap_mask", "ade20k_miou", "nyuv2_delta1")] == \
        [-0.3, -0.4, -0.1, -0.1, 0.0]
    lines = r.markdown.splitlines()
    assert "| 4M (ours) | B | 84.2 ± 0.3 | 49.3 ± 0.4 | 42.6 ± 0.1 | 50.0 ± 0.3 | 92.0 ± 0.3 |" in lines
    assert "| Δ vs published 4M | B | -0.3 | -0.4 | -0.1 | -0.1 | +0.0 |" in lines
    # one seed: no ±; only the tasks it ran
    assert "| MAE (ours) | B | 83.9 | – | – | – | – |" in lines
    assert "| Δ vs published MAE | B | -0.3 | – | – | – | – |" in lines
    # no published counterpart: no Δ row
    i = lines.index("| random init (ours) | B | 40.0 | – | – | – | – |")
    assert i == len(lines) - 1
    assert any("nyuv2_semseg_rgbd" in n for n in r.notes)
    assert r"84.2 $\pm$ 0.3" in r.latex and r.latex.count(r"\midrule") == 3


def test_method_label_with_size_suffix_matches_published(tmp_path):
    for seed, top1 in enumerate([86.0, 86.4]):
        finished(tmp_path, transfer_config("4M-L", "L", "in1k", seed), {"top1": top1})
    r = transfer_table(collect(tmp_path).table)
    assert "| 4M-L (ours) | L | 86.2 ± 0.3 | – | – | – | – |" in r.markdown.splitlines()
    assert "| Δ vs published 4M | L | -0.4 | – | – | – | – |" in r.markdown.splitlines()


def test_transfer_table_shows_the_bootstrap_interval_of_each_cell(tmp_path):
    for seed, (top1, ci) in enumerate([(86.0, 0.4), (86.4, 0.6)]):
        finished(tmp_path, transfer_config("4M-L", "L", "in1k", seed), {"top1": top1, "top1.ci95": ci})
    finished(tmp_path, transfer_config("4M-L", "L", "ade20k", 0), {"mIoU": 50.0})  # no per-sample results
    r = transfer_table(collect(tmp_path).table)
    assert "| 4M-L (ours) | L | 86.2 ± 0.3 [CI ±0.5] | – | – | 50.0 | – |" in r.markdown.splitlines()
    ours = r.frame[r.frame["kind"] == "ours"].iloc[0]
    assert ours["in1k_top1_ci95"] == pytest.approx(0.5) and math.isnan(ours["ade20k_miou_ci95"])
    assert any("bootstrap" in n for n in r.notes)


def test_transfer_table_refuses_to_average_different_configs(tmp_path):
    finished(tmp_path, transfer_config("4M", "B", "in1k", 0), {"top1": 80.0})
    cfg = transfer_config("4M", "B", "in1k", 1)
    cfg["transfer"]["epochs"] = 50
    finished(tmp_path, cfg, {"top1": 85.0})
    df = collect(tmp_path).table
    with pytest.raises(ValueError, match=r"differ beyond the seed in \{'transfer.epochs': \['1', '50'\]\}"):
        transfer_table(df)
    # filtering to one config resolves it
    r = transfer_table(df, where={"transfer.epochs": "50"})
    assert "| 4M (ours) | B | 85.0 | – | – | – | – |" in r.markdown.splitlines()


def test_fraction_metric_written_as_percent_is_an_error(tmp_path):
    finished(tmp_path, transfer_config("4M", "B", "coco", 0), {"bbox_mAP": 49.7, "segm_mAP": 42.7})
    with pytest.raises(ValueError, match="stored as a fraction"):
        transfer_table(collect(tmp_path).table)


def test_ablation_grid_keys_values_avg_and_best(ablation_df):
    r = ablation_table(ablation_df)
    f = r.frame
    # transfer.init is a path that alpha determines; transfer.epochs only differs between tasks
    assert list(f.columns[:1]) == ["pretrain.alpha"] and "transfer.init" not in f and "transfer.epochs" not in f
    assert list(f["pretrain.alpha"]) == [0.2, 0.5, 1.0]
    assert list(f["in1k"].round(6)) == [1.05, 0.85, 0.96]
    assert list(f["ade20k"].round(6)) == [2.1, 2.2, 1.85]
    assert list(f["avg"].round(6)) == [1.575, 1.525, 1.405]
    # avg std over per-seed averages: alpha 0.2 -> seeds (1.5, 1.65)
    assert f["avg_std"].iloc[0] == pytest.approx(0.15 / math.sqrt(2))
    lines = r.markdown.splitlines()
    assert lines[0] == "| pretrain.alpha | ade20k | in1k | avg |"
    assert lines[2] == "| 0.2 | 2.100 ± 0.141 | 1.050 ± 0.071 | 1.575 ± 0.106 |"
    assert lines[3] == "| 0.5 | 2.200 ± 0.141 | **0.850 ± 0.071** | 1.525 ± 0.106 |"
    assert lines[4] == "| 1.0 | **1.850 ± 0.071** | 0.960 ± 0.014 | **1.405 ± 0.042** |"
    assert r.latex.count(r"\textbf{") == 3 and r"\textbf{0.850 $\pm$ 0.071}" in r.latex


def test_ablation_reference_normalisation(ablation_df):
    r = ablation_table(ablation_df, reference="pretrain.alpha=0.2")
    avg = list(r.frame["avg"])
    assert avg[0] == pytest.approx(1.0)
    assert avg[1] == pytest.approx((0.85 / 1.05 + 2.2 / 2.1) / 2)
    assert avg[2] == pytest.approx((0.96 / 1.05 + 1.85 / 2.1) / 2)
    assert "avg (rel. to ref)" in r.markdown.splitlines()[0]
    with pytest.raises(ValueError, match="matches 0 grid rows"):
        ablation_table(ablation_df, reference="pretrain.alpha=0.3")


def test_ablation_refuses_to_hide_a_varying_key(ablation_df):
    with pytest.raises(ValueError, match=r"differ in \['pretrain.alpha'\]"):
        ablation_table(ablation_df, keys=["pretrain.tokens"])


def test_ablation_ties_are_all_bold(tmp_path):
    for alpha in (0.1, 0.2):
        finished(tmp_path, {"a": alpha, "transfer": {"task": "in1k"}, "seed": 0}, {"val_loss": 1.0})
    r = ablation_table(collect(tmp_path).table)
    assert r.markdown.count("**1.000**") == 2


def test_custom_table(transfer_df):
    r = custom_table(transfer_df, index=["method"], columns=["transfer.task"], metrics=["top1"], decimals=2)
    lines = r.markdown.splitlines()
    assert lines[0] == "| method | in1k |"
    assert "| 4M | 84.20 ± 0.28 |" in lines and "| MAE | 83.90 |" in lines
    assert r.frame.set_index("method").loc["4M", "in1k_n"] == 2


def test_metric_lookup_prefers_selected_eval_and_val_names(tmp_path):
    finished(tmp_path, {"seed": 0}, {"loss": 9.0, "train_loss": 8.0, "evals": [{"step": 1, "val_loss": 1.5}]})
    finished(tmp_path, {"seed": 1}, {"train/top1": 99.0, "val/top1": 70.0})
    df = collect(tmp_path).table
    assert lookup_metric(df, "loss")["value"].tolist() == [1.5]
    assert lookup_metric(df, "top1")["value"].tolist() == [70.0]


def test_write_reports_wrote_unchanged_replaced(transfer_df, tmp_path):
    r = transfer_table(transfer_df)
    first = r.write(tmp_path, "t")
    assert {k: s for k, (_, s) in first.items()} == {"md": "wrote", "tex": "wrote", "csv": "wrote"}
    assert {s for _, s in r.write(tmp_path, "t").values()} == {"unchanged"}
    other = table(None, "transfer")
    assert {s for _, s in other.write(tmp_path, "t").values()} == {"replaced"}
    assert (tmp_path / "t.md").read_text() == EXPECTED_PUBLISHED.read_text()
    assert (tmp_path / "t.csv").read_text().startswith("kind,method,size,in1k_top1,")


def test_size_and_label_parsing():
    assert split_size("4M-B (RGB→RGB only)") == ("4M (RGB→RGB only)", "B")
    assert split_size("DeiT III") == ("DeiT III", None) and split_size("MAE L") == ("MAE", "L")
    assert [size_from_name(n) for n in ("fm_base_12e_12d_swiglu_nobias", "vit_large_patch16", "fm_nano_2e_2d", "B", None,
                                        "fm_pico_2e_2d_swiglu_nobias")] \
        == ["B", "L", "N", "B", None, "P"]


def test_unknown_layout_and_where_key():
    with pytest.raises(ValueError, match="unknown table layout"):
        table(None, "wide")
    import numpy as np
    import pandas as pd
    with pytest.raises(KeyError, match="no column 'nope'"):
        transfer_table(pd.DataFrame({"run_id": ["a"], "metric": ["m"], "value": [1.0]}), where={"nope": 1})


def test_ablation_leaves_out_a_task_without_the_metric(tmp_path):
    for a in (1, 2):
        finished(tmp_path, {"a": a, "transfer": {"task": "in1k"}, "seed": 0}, {"val_loss": float(a)})
        finished(tmp_path, {"a": a, "transfer": {"task": "coco"}, "seed": 0}, {"bbox_mAP": 0.1 * a, "train_loss": 1.0})
    df = collect(tmp_path).table
    r = ablation_table(df)
    assert r.markdown.splitlines()[0] == "| a | in1k |"
    assert any("coco left out" in n for n in r.notes)
    mixed = ablation_table(df, metric={"in1k": "loss", "coco": "bbox_mAP"})
    assert mixed.markdown.splitlines()[0] == "| a | coco bbox_mAP | in1k loss |"  # no avg: min and max mixed
    assert mixed.markdown.splitlines()[3] == "| 2 | **0.200** | 2.000 |"
    with pytest.raises(ValueError, match="no run reports the metric 'top1'"):
        ablation_table(df, metric="top1")


def test_oob_rows_at_chance_are_not_bold_whatever_the_float_rounding():
    import numpy as np
    import pandas as pd

    from results.tables import oob_table

    hits = 100 * float(np.mean([True] * 5 + [False] * 91))  # 5.208333333333334
    chance = 100 * 5 / 96                                                          # 5.208333333333333
    assert hits != chance
    rows = [("retrieval/recall@5", hits), ("retrieval/recall@5.baseline", chance),
            ("retrieval_dinov2_global_from_rgb/recall@5", 67.7), ("retrieval_dinov2_global_from_rgb/recall@5.ceiling", 95.8),
            ("retrieval_dinov2_global_from_rgb/recall@5.baseline", chance)]
    df = pd.DataFrame([{"task": "oob", "method": "m", "metric": k, "value": v} for k, v in rows])
    tbl = oob_table(df)
    assert tbl.frame["beats_baseline"].tolist() == [False, True]
    assert "| m | caption → image retrieval R@5 (CLIP tokens) | 5.2 | – | 5.2 |" in tbl.markdown
    assert "| m | RGB → image retrieval R@5 (DINOv2 global tokens) | **67.7** | 95.8 | 5.2 |" in tbl.markdown


def test_probe_rows_are_apart_from_fine_tuning_and_get_no_delta(tmp_path):
    finished(tmp_path, transfer_config("4M-L", "L", "in1k", 0), {"top1": 86.0})
    finished(tmp_path, transfer_config("4M-L", "L", "in1k", 0, transfer={"task": "in1k", "protocol": "linear",
                                                                         "init": "/ckpt/4M-L-L.safetensors", "epochs": 1}),
             {"top1": 70.0})
    lines = transfer_table(collect(tmp_path).table).markdown.splitlines()
    assert "| 4M-L (ours) | L | 86.0 | – | – | – | – |" in lines
    assert "| 4M-L, linear (ours) | L | 70.0 | – | – | – | – |" in lines
    assert sum(line.startswith("| Δ vs published") and "| L |" in line for line in lines) == 1
