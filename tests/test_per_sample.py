"""Per-sample results: metric specs, bootstrap intervals, the paired comparison of two runs on the same images."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fourm.per_sample import bootstrap, paired_bootstrap, read_per_sample, value, write_per_sample

TOP1 = {"top1": {"kind": "mean", "values": "correct", "scale": 100.0}}


def test_mean_interval_matches_the_binomial_width(tmp_path):
    rng = np.random.default_rng(0)
    hits = (rng.random(2000) < 0.7).astype(np.float64)
    cis = write_per_sample(tmp_path, {"correct": hits}, TOP1)
    expected = 1.96 * math.sqrt(0.7 * 0.3 / 2000) * 100  # normal approximation of the binomial: 2.0 points
    assert cis["top1.ci95"] == pytest.approx(expected, rel=0.1)
    arrays, spec = read_per_sample(tmp_path)
    assert value(arrays, spec["top1"]) == pytest.approx(100 * hits.mean())
    assert bootstrap(arrays, spec["top1"], seed=3) == bootstrap(arrays, spec["top1"], seed=3)  # seeded


def test_ratio_metric_is_miou_over_classes_present():
    inter = np.array([[1.0, 0.0, 0.0], [3.0, 2.0, 0.0]])
    union = np.array([[2.0, 0.0, 0.0], [4.0, 4.0, 0.0]])  # class 2 never present: left out
    spec = {"kind": "ratio", "num": "i", "den": "u", "scale": 100.0}
    assert value({"i": inter, "u": union}, spec) == pytest.approx(100 * (4 / 6 + 2 / 4) / 2)
    assert value({"i": inter, "u": union}, spec, rows=np.array([0, 0])) == pytest.approx(50.0)


def test_where_restricts_a_mean_to_its_rows():
    arrays = {"d": np.array([1.0, 0.0, 3.0]), "ok": np.array([True, False, True])}
    assert value(arrays, {"kind": "mean", "values": "d", "where": "ok"}) == 2.0


def test_paired_bootstrap_tells_a_real_gap_from_none(tmp_path):
    rng = np.random.default_rng(1)
    base = (rng.random(500) < 0.6).astype(np.float64)
    better = np.where(rng.random(500) < 0.3, 1.0, base)  # right wherever base was, and more
    for name, hits in (("a", better), ("b", base), ("c", base.copy())):
        (tmp_path / name).mkdir()
        write_per_sample(tmp_path / name, {"correct": hits}, TOP1)
    gap = paired_bootstrap([(tmp_path / "a", tmp_path / "b")], "top1")
    assert gap["diff"] == pytest.approx(100 * (better.mean() - base.mean())) and gap["ci95"][0] > 0 and gap["p"] == 0.0
    same = paired_bootstrap([(tmp_path / "c", tmp_path / "b")], "top1")
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["p"] == 1.0
    (tmp_path / "d").mkdir()
    write_per_sample(tmp_path / "d", {"correct": base[:10]}, TOP1)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([(tmp_path / "a", tmp_path / "d")], "top1")


def test_bad_specs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one row per sample"):
        write_per_sample(tmp_path, {"a": np.zeros(3), "b": np.zeros(4)}, {})
    with pytest.raises(ValueError, match="kind must be one of"):
        write_per_sample(tmp_path, {"a": np.zeros(3)}, {"m": {"kind": "median", "values": "a"}})
    with pytest.raises(ValueError, match="is not an array"):
        write_per_sample(tmp_path, {"a": np.zeros(3)}, {"m": {"kind": "mean", "values": "b"}})


def test_verdict_uses_the_paired_bootstrap(tmp_path):
    from results.report import verdict, verdict_line

    rng = np.random.default_rng(2)
    folders = {"in1k": {"pre": {}, "rand": {}}}
    primary = {"in1k": {"pre": [], "rand": []}}
    for seed in (0, 1):
        rand = (rng.random(400) < 0.5).astype(np.float64)
        pre = np.where(rng.random(400) < 0.4, 1.0, rand)
        for label, hits in (("pre", pre), ("rand", rand)):
            d = tmp_path / f"{label}{seed}"
            d.mkdir()
            write_per_sample(d, {"correct": hits}, TOP1)
            folders["in1k"][label][seed] = d
            primary["in1k"][label].append(100 * hits.mean())
    v = verdict(primary, "pre", "rand", folders=folders)["in1k"]
    assert v["pretrained_wins"] and v["significant"] and v["paired"]["pairs"] == 2 and v["paired"]["ci95"][0] > 0
    assert "paired bootstrap" in verdict_line({"in1k": v})
