"""IN1K fine-tuning: the paper recipe as built objects, schedule numbers, metrics, the official fixture, tiny runs, resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import transfer.classification as cls
from transfer.configs import resolve
from transfer.run import cli, run_transfer


def _fake_in1k(root: Path, classes: list[str], per_split: dict[str, list[str]]) -> Path:
    """A real-layout ImageFolder with a few 32 px JPEGs and a meta.json class list."""
    rng = np.random.default_rng(0)
    for split, names in per_split.items():
        for i, name in enumerate(names):
            d = root / "in1k" / split / name
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.JPEG")
    (root / "in1k" / "meta.json").write_text(json.dumps({"classes": classes}))
    return root


@pytest.fixture(scope="module")
def paper_parts(tmp_path_factory):
    """The paper profile built (ViT-B size, random init) on a 2-image dataset in the real layout: a dry run."""
    classes = [f"n{i:08d}" for i in range(1000)]
    root = _fake_in1k(tmp_path_factory.mktemp("in1k_paper"), classes, {"train": [classes[3]], "val": [classes[7]]})
    config = resolve("in1k", "paper", {"init": "random", "data_root": str(root), "_runtime.num_workers": 0,
                                       "_runtime.device": "cpu"})
    return config, cls.build(config)


def test_paper_dry_run_builds_the_4m_b_recipe(paper_parts):
    config, parts = paper_parts
    model, opt = parts["model"], parts["optimizer"]
    assert model.backbone.depth == 12 and model.backbone.dim == 768 and model.head.out_features == 1000
    assert len(parts["train_loader"].dataset) == 1 and parts["val_loader"].dataset.targets == [7]
    assert parts["train_loader"].batch_size == 1024 and parts["train_loader"].drop_last
    # AdamW(0.9, 0.999) over layer-decay groups, peak lr = 5e-4 * 1024 / 256
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert cls.peak_lr(config["train"]) == pytest.approx(2e-3)
    scales = {g["layer_id"]: g["lr_scale"] for g in opt.param_groups}
    assert scales[13] == 1.0 and scales[0] == pytest.approx(0.65 ** 13) and scales[1] == pytest.approx(0.65 ** 12)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    for g in opt.param_groups:
        names = g["names"]
        if any(n.startswith("head.weight") for n in names):
            assert g["weight_decay"] == 0.05 and g["layer_id"] == 13
        if any(n.endswith("pos_emb") or n.endswith(".bias") for n in names):
            assert g["weight_decay"] == 0.0
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # warmup starts at 0 for every group
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    # drop path rises linearly to 0.1 in the last block
    assert model.backbone.encoder[-1].drop_path.p == pytest.approx(0.1)
    # mixup 0.8 / cutmix 1.0 / smoothing 0.1 with soft-target CE
    m = parts["mixup"]
    assert (m.mixup_alpha, m.cutmix_alpha, m.label_smoothing, m.num_classes) == (0.8, 1.0, 0.1, 1000)
    assert type(parts["criterion"]).__name__ == "SoftTargetCrossEntropy"
    # RandAugment rand-m9-mstd0.5-inc1 at 224 px; eval resizes to 256 and center-crops 224
    train_tf = parts["train_loader"].dataset.transform
    ra = [t for t in train_tf.transforms if type(t).__name__ == "RandAugment"][0]
    assert ra.num_layers == 2 and {op.magnitude for op in ra.ops} == {9} and {op.magnitude_std for op in ra.ops} == {0.5}
    assert any(op.name == "PosterizeIncreasing" for op in ra.ops)
    x, y = parts["val_loader"].dataset[0]
    assert x.shape == (3, 224, 224) and y == 7


def test_schedule_is_mae_warmup_then_cosine_with_layer_scales():
    train = {"epochs": 10, "warmup_epochs": 2, "min_lr": 1e-6, "lr": 1e-3, "blr": 0, "batch_size": 8}
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-3, "lr_scale": 1.0}, {"params": [p2], "lr": 1e-3, "lr_scale": 0.5}])
    sched = cls.build_scheduler(opt, train, updates_per_epoch=5)

    def mae(epoch):  # MAE's util/lr_sched.adjust_learning_rate
        if epoch < 2:
            return 1e-3 * epoch / 2
        return 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (epoch - 2) / (10 - 2)))

    for update in (0, 1, 4, 9, 10, 17, 30, 49):
        sched.step_update(update)
        want = mae(update / 5)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * want, rel=1e-9, abs=1e-15)


def test_evaluate_top1_top5_and_loss_by_hand():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0], [1.0, 0.5, 0, 0, 0, 0, 2]])
    targets = torch.tensor([0, 0, 4, 1])
    loader = [(logits[:3], targets[:3]), (logits[3:], targets[3:])]
    m = cls.evaluate(torch.nn.Identity(), loader, torch.device("cpu"))
    # sample 0: top1 hit; 1: class 0 is last of 7 (miss); 2: class 4 is 5th (top5 hit); 3: class 1 is 3rd
    assert m["top1"] == 25.0 and m["top5"] == 75.0
    assert m["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item())


def test_posterize_keeps_zero_bits_as_black_and_every_op_runs_at_full_magnitude():
    train_tf, _ = cls.build_transforms({"image_size": 32, "interpolation": "bicubic", "auto_augment": "rand-m9-mstd0.5-inc1",
                                        "reprob": 0.0, "remode": "pixel", "recount": 1, "crop_pct": 0.875},
                                       {"mean": [0.5] * 3, "std": [0.5] * 3})
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    assert np.asarray(cls.posterize(img, 0)).max() == 0
    assert np.asarray(cls.posterize(img, 1)).tolist() == np.asarray(img.point(lambda v: v & 0x80)).tolist()
    ra = [t for t in train_tf.transforms if type(t).__name__ == "RandAugment"][0]
    for op in ra.ops:  # magnitude 10 is what m9 + mstd 0.5 draws a few percent of the time
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
        assert op(img).size == (32, 32)


def test_random_resized_crop_area_follows_crop_scale():
    base = {"image_size": 32, "interpolation": "bicubic", "auto_augment": None, "reprob": 0.0, "remode": "pixel",
            "recount": 1, "crop_pct": 0.875}
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}

    def crop_scale(train_cfg):
        train_tf, _ = cls.build_transforms(train_cfg, norm)
        return tuple(train_tf.transforms[0].scale)

    assert crop_scale(base) == (0.08, 1.0)  # timm / MAE / DeiT default
    assert crop_scale({**base, "crop_scale": [0.5, 1.0]}) == (0.5, 1.0)


def test_class_list_comes_from_meta_and_stray_folders_are_refused(tmp_path):
    root = _fake_in1k(tmp_path, ["a", "b", "c"], {"train": ["a", "c"], "val": ["b"]})
    cfg = resolve("in1k", "tiny", {"init": "random", "data_root": str(root)})
    train, val, classes = cls.build_datasets(cfg)
    assert classes == ["a", "b", "c"] and sorted(train.targets) == [0, 2] and val.targets == [1]
    cfg["data"]["num_classes"] = 5
    with pytest.raises(ValueError, match="has 3 classes but data.num_classes=5"):
        cls.build_datasets(cfg)
    (root / "in1k" / "val" / "zebra").mkdir()
    cfg["data"]["num_classes"] = None
    with pytest.raises(ValueError, match=r"\['zebra'\] are not in the class list"):
        cls.build_datasets(cfg)


def test_missing_layout_names_the_folder_and_the_fix(tmp_path, capsys):
    cfg = resolve("in1k", "tiny", {"init": "random", "data_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"in1k/train.*fourm-bench world"):
        cls.build_datasets(cfg)
    runs = tmp_path / "runs"
    assert cli(["task=in1k", "profile=tiny", "init=random", f"data_root={tmp_path}", f"runs_root={runs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fourm-bench transfer: in1k: no ") and "\n" not in err
    assert not runs.exists()  # the data is checked before a run folder is made


def test_official_fixture_loads_every_encoder_key(official_checkpoint):
    cfg = {"transfer": {"init": str(official_checkpoint), "model": "fm_nano_2e_2d_swiglu_nobias"},
           "train": {"image_size": 224, "drop_path": 0.0, "head_init_std": 2e-5}}
    model = cls.build_model(cfg, num_classes=5)
    official = load_file(str(official_checkpoint))
    encoder_keys = list(model.backbone.state_dict())
    assert encoder_keys and all(k in official for k in encoder_keys)
    for k in encoder_keys:
        torch.testing.assert_close(model.backbone.state_dict()[k], official[k], rtol=0, atol=0)
    assert model.backbone.dim == 8 and model.backbone.depth == 2
    # at the tiny profile's 64 px only the position grid changes (resized), every other tensor is the file's
    small = cls.build_model({**cfg, "train": {**cfg["train"], "image_size": 64}}, num_classes=5)
    assert small.backbone.encoder_embeddings["rgb@224"].pos_emb.shape[1] == 16
    torch.testing.assert_close(small.backbone.encoder[1].mlp.fc3.weight, official["encoder.1.mlp.fc3.weight"])
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_global_pool_averages_the_last_block_and_drops_the_encoder_norm(official_checkpoint):
    """MAE's fine-tune head: mean of the last block's tokens -> fc_norm -> linear; ``global_pool=false`` keeps the norm."""
    cfg = {"transfer": {"init": str(official_checkpoint), "model": "fm_nano_2e_2d_swiglu_nobias"},
           "train": {"image_size": 64, "drop_path": 0.0, "head_init_std": 0.5}}
    torch.manual_seed(0)
    pooled = cls.build_model(cfg, num_classes=5).eval()
    torch.manual_seed(0)
    normed = cls.build_model({**cfg, "train": {**cfg["train"], "global_pool": False}}, num_classes=5).eval()
    assert not any(k.startswith("backbone.encoder_norm") for k in pooled.state_dict())
    assert any(k.startswith("backbone.encoder_norm") for k in normed.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, feats, _ = normed.backbone.forward_features(x, out_indices=[normed.backbone.depth - 1])
        last = feats[-1]  # the last block's tokens, before the encoder norm
        want_pooled = pooled.head(pooled.fc_norm(last.mean(1)))
        want_normed = normed.head(normed.fc_norm(normed.backbone.encoder_norm(last).mean(1)))
        torch.testing.assert_close(pooled(x), want_pooled)
        torch.testing.assert_close(normed(x), want_normed)
        assert not torch.allclose(pooled(x), normed(x))


def _tiny(data_root, tmp_path, init, **extra):
    return resolve("in1k", "tiny", {"init": init, "data_root": str(data_root), "runs_root": str(tmp_path / "runs"),
                                    "train.epochs": 2, **extra})


def test_tiny_cli_end_to_end_with_the_official_fixture(transfer_data_root, official_checkpoint, tmp_path, capsys):
    argv = ["task=in1k", "profile=tiny", f"init={official_checkpoint}", f"data_root={transfer_data_root}",
            f"runs_root={tmp_path / 'runs'}", "train.epochs=2"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "transfer in1k/tiny: done" in out and "top1=" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "DONE").exists() and (run_dir / "checkpoint.pt").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["transfer"]["init"] == str(official_checkpoint.resolve())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100 and math.isfinite(metrics["val_loss"])
    assert metrics["val_images"] == 16 and metrics["epochs"] == 2
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    per_epoch = metrics["train_images"] // 8
    assert [r["step"] for r in steps] == list(range(1, 2 * per_epoch + 1))
    # lr 1e-3, warmup 1 epoch from 0, then cosine to 1e-6 over the second epoch (per optimizer update)
    want = [1e-3 * u / per_epoch if u < per_epoch else 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (u - per_epoch) / per_epoch))
            for u in range(2 * per_epoch)]
    assert [r["lr"] for r in steps] == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert [r["epoch"] for r in records if "top1" in r and "event" not in r] == [0, 1]
    assert cli(argv) == 0 and "already done (skipped)" in capsys.readouterr().out


def test_resume_after_a_crash_matches_an_uninterrupted_run(transfer_data_root, tmp_path, monkeypatch):
    full = run_transfer(_tiny(transfer_data_root, tmp_path / "a", "random"))
    full_state = torch.load(full.path / cls.CHECKPOINT, weights_only=True)

    real_epoch = cls.train_one_epoch

    def crash_in_second_epoch(parts, config, epoch, run=None):
        if epoch == 1:
            raise KeyboardInterrupt("preempted")
        return real_epoch(parts, config, epoch, run)

    cfg = _tiny(transfer_data_root, tmp_path / "b", "random")
    monkeypatch.setattr(cls, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(cfg)
    monkeypatch.setattr(cls, "train_one_epoch", real_epoch)
    (run_dir,) = (tmp_path / "b" / "runs").iterdir()
    assert not (run_dir / "DONE").exists()
    assert torch.load(run_dir / cls.CHECKPOINT, weights_only=True)["epoch"] == 0

    resumed = run_transfer(cfg)
    assert resumed.done and resumed.id == full.id
    assert {"event": "resume", "epoch": 1}.items() <= [r for r in resumed.read_log() if r.get("event") == "resume"][0].items()
    for k in ("top1", "top5", "val_loss", "train_loss"):
        assert resumed.metrics[k] == pytest.approx(full.metrics[k], rel=1e-5), k
    state = torch.load(resumed.path / cls.CHECKPOINT, weights_only=True)
    for k, v in full_state["model"].items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-5, atol=1e-6)



def test_benchmark_baselines_compute_the_same_step():
    from benchmarks import transfer as bench

    ours = bench._variant("ours", "fm_nano_2e_2d_swiglu_nobias", 32, 10, bench.TRAIN)
    naive = bench._variant("naive-pool", "fm_nano_2e_2d_swiglu_nobias", 32, 10, bench.TRAIN)
    single = bench._variant("single-group", "fm_nano_2e_2d_swiglu_nobias", 32, 10, bench.TRAIN)
    x = torch.randn(4, 3, 32, 32)
    for v in (ours, naive, single):
        v["model"].eval()
    torch.testing.assert_close(naive["model"](x), ours["model"](x))
    torch.testing.assert_close(single["model"](x), ours["model"](x))
    assert len(single["opt"].param_groups) == 1 and len(ours["opt"].param_groups) > 4
    r = bench.measure("fm_nano_2e_2d_swiglu_nobias", size=32, batch=4, rounds=1, warmup=0, num_classes=10)
    assert set(r["img_s"]) == {"ours", "single-group", "naive-pool"} and all(v > 0 for v in r["img_s"].values())


def test_activation_checkpointing_and_compiled_blocks_leave_the_metrics_as_they_are(transfer_data_root, tmp_path):
    """How fast and in how much memory (``_runtime``: not part of the run id), never what is computed."""
    from torch._dynamo.utils import counters

    base = ["task=in1k", "profile=tiny", "init=random", f"data_root={transfer_data_root}", "train.epochs=1"]
    runs = {}
    for name, extra in (("eager", []), ("checkpointed", ["_runtime.activation_checkpointing=true"]),
                        ("compiled", ["_runtime.compile=true"])):
        counters.clear()
        cfg = resolve("in1k", "tiny", [*base[2:], *extra, f"runs_root={tmp_path / name}"])
        runs[name] = run_transfer(cfg)
        if name == "compiled":
            assert counters["stats"]["unique_graphs"] >= 1  # the blocks ran compiled
    assert len({r.id for r in runs.values()}) == 1
    eager = runs["eager"].metrics
    assert runs["checkpointed"].metrics["train_loss"] == eager["train_loss"]
    assert runs["checkpointed"].metrics["top1"] == eager["top1"]
    assert abs(runs["compiled"].metrics["train_loss"] - eager["train_loss"]) < 1e-5
    assert abs(runs["compiled"].metrics["val_loss"] - eager["val_loss"]) < 1e-5
