"""Transfer protocols: frozen-feature probes (linear, kNN) from one cache, LoRA, low-shot, their checks, tracking."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fourm.per_sample import read_per_sample, value
from fourm.tracking import read_scalars
from transfer import probe
from transfer.configs import ConfigError, resolve
from transfer.run import cli, run_transfer


@pytest.fixture(scope="module")
def probe_runs(transfer_data_root, official_checkpoint, tmp_path_factory):
    """A linear probe, then a kNN probe and a 10% linear probe of the same encoder, in one runs root."""
    root = tmp_path_factory.mktemp("probe_runs")

    def run(protocol, **extra):
        return run_transfer(resolve("in1k", "tiny", {"data_root": str(transfer_data_root), "init": str(official_checkpoint),
                                                     "runs_root": str(root), "protocol": protocol, **extra}))

    linear = run("linear")
    cache = json.loads((linear.path / "features.json").read_text())["cache"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "_features").rglob("*.npy")}
    knn = run("knn")
    low = run("linear", **{"data.train_fraction": 0.1})
    return {"linear": linear, "knn": knn, "low": low, "cache": cache, "stamps": stamps, "root": root}


def test_second_probe_encodes_nothing(probe_runs):
    linear, knn, low = probe_runs["linear"], probe_runs["knn"], probe_runs["low"]
    assert linear.metrics["encoded_images"] == linear.metrics["train_images"] + linear.metrics["val_images"] > 0
    for r in (knn, low):
        assert r.metrics["encoded_images"] == 0
        assert json.loads((r.path / "features.json").read_text())["cache"] == probe_runs["cache"]
        assert [e for e in r.read_log() if e.get("event") == "features"][0]["cached"] is True
    after = {p.name: p.stat().st_mtime_ns for p in (probe_runs["root"] / "_features").rglob("*.npy")}
    assert after == probe_runs["stamps"]  # nothing rewritten
    feats = np.load(f"{probe_runs['cache']}/train_features.npy", mmap_mode="r")
    assert feats.dtype == np.float16 and feats.shape[1:] == (2, 8)  # the last 2 blocks of the dim-8 official fixture


def test_linear_grid_reports_every_head_and_the_best(probe_runs):
    m = probe_runs["linear"].metrics
    cfg = probe_runs["linear"].config["probe"]
    assert len(m["grid"]) == len(cfg["blocks"]) * len(cfg["lrs"])
    best = max(m["grid"].values(), key=lambda r: (r["top1"], r["top5"]))
    assert m["top1"] == best["top1"] and m["grid"][m["best"]]["top1"] == m["top1"]
    arrays, spec = read_per_sample(probe_runs["linear"].path)
    assert value(arrays, spec["top1"]) == pytest.approx(m["top1"])  # the per-sample hits are the best head's
    assert 0 < m["top1.ci95"] < 50


def test_knn_reports_each_k_clipped_to_the_training_set(probe_runs):
    m = probe_runs["knn"].metrics
    n = m["train_images"]
    assert set(m["grid"]) == {f"k{min(k, n)}" for k in (10, 20, 100, 200)}
    assert m["top1"] == max(r["top1"] for r in m["grid"].values())


def test_knn_votes_by_hand():
    # two classes on a circle: the query's neighbours by cosine are 0 (sim 1.0), 1 (0.8), 2 (0.6)
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 0, 0])
    query = torch.tensor([[2.0, 0.0]])
    out = probe.knn(train, labels, query, torch.tensor([0]), 2, ks=[1, 3], temperature=0.1)
    assert out["k1"]["top1"] == 0.0  # the nearest is class 1
    # k=3: class 1 gets exp(10), class 0 exp(8) + exp(6) < exp(10): still class 1
    assert out["k3"]["top1"] == 0.0
    out = probe.knn(train, labels, query, torch.tensor([0]), 2, ks=[3], temperature=10.0)
    assert out["k3"]["top1"] == 100.0  # a flat temperature: two votes of class 0 beat one of class 1


def test_low_shot_keeps_a_seeded_fraction_per_class(probe_runs, transfer_data_root):
    low = probe_runs["low"]
    kept = (low.path / probe.SAMPLES_FILE).read_text().split()
    assert len(kept) == low.metrics["train_images"]
    labels = np.array([0] * 10 + [1] * 3)
    a = probe.low_shot_indices(labels, 0.1, None, seed=0)
    assert len(a) == 2 and set(labels[a]) == {0, 1}  # ceil(0.1 * n), at least one per class
    assert list(a) == list(probe.low_shot_indices(labels, 0.1, None, seed=0))
    assert any(list(probe.low_shot_indices(labels, 0.5, None, seed=s)) != list(a) for s in range(1, 5))
    assert len(probe.low_shot_indices(labels, None, 3, seed=0)) == 6
    with pytest.raises(ConfigError, match="class 1 has only 3"):
        probe.low_shot_indices(labels, None, 4, seed=0)


def test_finetune_low_shot_writes_its_samples(transfer_data_root, tmp_path):
    r = run_transfer(resolve("in1k", "tiny", {"data_root": str(transfer_data_root), "init": "random",
                                              "runs_root": str(tmp_path), "data.shots_per_class": 1,
                                              "train.batch_size": 2, "train.epochs": 1}))
    kept = (r.path / probe.SAMPLES_FILE).read_text().split()
    classes = {p.split("/")[0] for p in kept}
    assert len(kept) == len(classes) == r.metrics["train_images"]
    # the finished run's numbers are in TensorBoard too, each logged step a point
    tb = read_scalars(r.path)
    losses = [e["loss"] for e in r.read_log() if "loss" in e and "step" in e]
    assert [v for _, v in tb["loss"]] == pytest.approx(losses) and "top1" in tb


def test_lora_trains_adapters_only(official_checkpoint, tmp_path):
    from transfer.lora import add_lora, load_adapter, save_adapter
    from transfer.mmseg_modules import FourMBackbone

    torch.manual_seed(0)
    bb = FourMBackbone(init=str(official_checkpoint), model="fm_nano_2e_2d_swiglu_nobias", image_size=64,
                       out_indices=[0, 1], lora=dict(rank=2, alpha=4, dropout=0.0, targets=["attn.qkv", "mlp.fc2"]))
    base = {n: p.detach().clone() for n, p in bb.named_parameters() if not p.requires_grad}
    trained = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert {n.split(".")[4] for n in trained} == {"qkv", "fc2"}
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 3, 64, 64)
    for _ in range(3):
        loss = sum(f.square().mean() for f in bb(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, base[n]) for n, p in bb.named_parameters() if n in base)  # the encoder as loaded
    official = load_file(str(official_checkpoint))
    qkv = bb.encoder_model.encoder[0].attn.qkv.base_layer.weight
    assert torch.equal(qkv, official["encoder.0.attn.qkv.weight"].to(qkv.dtype))
    lora_b = dict(bb.named_parameters())["encoder_model.encoder.0.attn.qkv.lora_B.default.weight"]
    assert lora_b.abs().sum() > 0  # adapters start at B = 0 and have moved
    path = save_adapter(bb, tmp_path)
    saved = load_file(str(path))
    assert set(saved) == set(trained)
    fresh = FourMBackbone(init=str(official_checkpoint), model="fm_nano_2e_2d_swiglu_nobias", image_size=64,
                          out_indices=[0, 1], lora=dict(rank=2, alpha=4, dropout=0.0, targets=["attn.qkv", "mlp.fc2"]))
    load_adapter(fresh, path)
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(fresh(x), bb(x)))


def test_protocol_errors_are_one_line_before_any_job(transfer_data_root, tmp_path, capsys):
    base = ["profile=tiny", "init=random", f"data_root={transfer_data_root}", f"runs_root={tmp_path}"]
    cases = [(["task=ade20k", "protocol=knn"], "takes protocol=finetune|linear|lora, not 'knn'"),
             (["task=in1k", "protocol=bogus"], "not 'bogus'"),
             (["task=in1k", "data.train_fraction=1.5"], "must be in (0, 1]"),
             (["task=in1k", "data.train_fraction=0"], "must be in (0, 1]"),
             (["task=in1k", "data.shots_per_class=1000"], "has only"),
             (["task=in1k", "protocol=finetune", "lora.rank=4"], "does not read lora"),
             (["task=in1k", "protocol=linear", "probe.blocks=[1,4]"], "has 2 blocks"),
             (["task=in1k", "protocol=lora", "lora.targets=[attn.q]"], "lora.targets ['attn.q']: choose from"),
             (["task=in1k", "protocol=lora", "lora.rank=0"], "lora.rank=0"),
             (["task=in1k", "_runtime.tracker=tensorbored"], "choose one of")]
    for args, message in cases:
        assert cli(base + args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (args, err)
    assert not any(tmp_path.iterdir())  # nothing was started


def test_protocol_sections_follow_the_protocol(tmp_path):
    ft = resolve("in1k", "tiny", {"init": "random", "data_root": str(tmp_path)})
    assert ft["transfer"]["protocol"] == "finetune" and "lora" not in ft and "probe" not in ft
    lo = resolve("ade20k", "tiny", {"init": "random", "data_root": str(tmp_path), "protocol": "lora", "lora.rank": "4"})
    assert lo["lora"]["rank"] == 4 and "probe" not in lo
    li = resolve("ade20k", "tiny", {"init": "random", "data_root": str(tmp_path), "protocol": "linear"})
    assert "probe" not in li  # a dense linear probe trains the task's head on the frozen encoder
    kn = resolve("in1k", "tiny", {"init": "random", "data_root": str(tmp_path), "protocol": "knn", "knn.k": "[5]"})
    assert kn["knn"] == {"k": [5], "temperature": 0.07} and "probe" not in kn  # the linear grid is not its identity
    with pytest.raises(ConfigError, match="does not read probe"):
        resolve("in1k", "tiny", {"init": "random", "data_root": str(tmp_path), "protocol": "knn", "probe.lrs": "[0.1]"})
    from fourm.runs import run_id

    ids = {run_id(c) for c in (ft, lo, li, kn)}
    assert len(ids) == 4  # the protocol is part of the run's identity


def test_wandb_offline_mirrors_the_scalars(tmp_path, monkeypatch):
    from fourm.runs import open_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = open_run(tmp_path, {"x": 1, "_runtime": {"tracker": "wandb"}})
    for step in range(3):
        run.log(step=step, loss=1.0 / (step + 1))
    run.write_metrics({"loss": 1 / 3})
    run.mark_done()
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and run.id in offline[0].name
    assert [round(v, 4) for _, v in read_scalars(run.path)["loss"]] == [1.0, 0.5, 0.3333]
    assert math.isclose(run.metrics["loss"], 1 / 3)
