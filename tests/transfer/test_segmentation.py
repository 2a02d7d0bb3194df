"""ADE20K transfer through mmseg: paper protocol numbers, dry run on the real layout, official fixture, tiny end-to-end, resume."""
from __future__ import annotations

import math
import time

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmseg_testdata import fake_paper_layouts, official_fixture, world_layouts  # noqa: E402

from fourm.runs import open_run  # noqa: E402
from transfer import mmseg_runner, segmentation  # noqa: E402
from transfer.configs import resolve  # noqa: E402
from transfer.mmseg_modules import FourMBackbone, scaled_out_indices  # noqa: E402
from transfer.run import run_transfer  # noqa: E402


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return world_layouts(tmp_path_factory.mktemp("seg_world"))


def test_paper_config_is_the_ade20k_protocol(tmp_path):
    c = resolve("ade20k", "paper", {"data_root": str(tmp_path), "init": "random"})
    t, mm = c["train"], c["mm"]
    assert (t["image_size"], t["lr"], t["weight_decay"], t["layer_decay"], t["drop_path"]) == (512, 1e-4, 0.05, 0.65, 0.1)
    assert (t["iters"], t["batch_size"], t["warmup_iters"], t["schedule"], t["poly_power"]) == (160000, 16, 1500, "poly", 1.0)
    assert mm["test_cfg"] == {"mode": "slide", "crop_size": [512, 512], "stride": [341, 341]}
    assert mm["norm_cfg"]["type"] == "BN" and mm["decode_head"]["type"] == "UPerHead" and mm["auxiliary_head"]["type"] == "FCNHead"
    assert mm["out_indices"] == [3, 5, 7, 11] and mm["neck"] == {"type": "Feature2Pyramid", "rescales": [4, 2, 1, 0.5]}
    assert c["data"]["num_classes"] == 150


def test_out_indices_scale_with_depth():
    assert scaled_out_indices(12) == [3, 5, 7, 11]
    assert scaled_out_indices(24) == [7, 11, 15, 23]
    assert scaled_out_indices(6) == [1, 2, 3, 5]
    assert scaled_out_indices(2) == [0, 0, 0, 1]


def test_paper_dry_run_builds_model_optimizer_and_data(tmp_path):
    root = fake_paper_layouts(tmp_path / "data")
    c = resolve("ade20k", "paper", {"data_root": str(root), "init": "random"})
    built = segmentation.build(c)
    model, optim = built["model"], built["optimizer"]
    assert model.backbone.out_indices == [3, 5, 7, 11]
    assert model.backbone.encoder_model.encoder[-1].drop_path.p == pytest.approx(0.1)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert model.decode_head.num_classes == 150 and model.test_cfg["stride"] == (341, 341)
    lrs = {g["layer_id"]: g["lr"] for g in optim.optimizer.param_groups}
    assert lrs[13] == pytest.approx(1e-4) and lrs[0] == pytest.approx(1e-4 * 0.65**13)
    wds = {g["weight_decay"] for g in optim.optimizer.param_groups}
    assert wds == {0.0, 0.05}
    warm, poly = built["param_scheduler"]
    assert (warm["type"], warm["end"], poly["type"], poly["begin"], poly["end"]) == ("LinearLR", 1500, "PolyLR", 1500, 160000)
    assert built["train_dataloader"].batch_size == 16
    sample = built["train_dataloader"].dataset[0]
    assert sample["inputs"].shape[0] == 3 and max(sample["inputs"].shape[1:]) <= 512
    labels = sample["data_samples"].gt_sem_seg.data.unique()
    assert labels.max() <= 255 and (labels[labels != 255] < 150).all()  # reduce_zero_label: 0 -> 255, k -> k-1


def test_official_fixture_loads_into_the_backbone_without_missing_keys():
    from safetensors.torch import load_file

    path = official_fixture()
    backbone = FourMBackbone(init=str(path), image_size=64)
    state = load_file(str(path))
    own = backbone.encoder_model.state_dict()
    assert set(own) <= set(state)
    for k, v in own.items():
        if not k.endswith("pos_emb"):  # resized to the 64 px grid
            assert torch.equal(v, state[k]), k
    maps = backbone(torch.randn(2, 3, 64, 64))
    assert len(maps) == 4 and all(m.shape == (2, 8, 4, 4) for m in maps)
    assert backbone.out_indices == [0, 0, 0, 1]
    assert torch.equal(maps[0], maps[1]) and not torch.equal(maps[2], maps[3])


@pytest.mark.parametrize("init", ["official", "random"])
def test_tiny_trains_and_evaluates_end_to_end(layouts, tmp_path, init):
    path = str(official_fixture()) if init == "official" else "random"
    c = resolve("ade20k", "tiny", {"data_root": str(layouts), "init": path, "runs_root": str(tmp_path / "runs")})
    t0 = time.perf_counter()
    run = run_transfer(c)
    print(f"ade20k tiny init={init}: {time.perf_counter() - t0:.1f}s metrics={run.metrics}")
    assert run.done
    m = run.metrics
    assert 0.0 <= m["mIoU"] <= 100.0 and math.isfinite(m["val_loss"]) and m["val_loss"] > 0
    steps = [r for r in run.read_log() if "step" in r and "loss" in r]
    assert steps[-1]["step"] == c["train"]["iters"]
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns something in 30 steps
    assert (run.path / "mm" / f"iter_{c['train']['iters']}.pth").exists()
    again = run_transfer(c)  # DONE: skipped, same metrics
    assert again.metrics == m


def test_linear_probe_trains_only_the_head_on_a_frozen_encoder(layouts, tmp_path):
    """The demo's semseg protocol (protocol=linear): frozen encoder (weights as loaded, no drop path), a 1x1 conv on
    its last block."""
    from ablations.pipeline import load_recipe
    from transfer.adapter import build_encoder

    # the demo recipe's probe overrides (not its image size and schedule)
    demo = load_recipe("demo")[1]["transfer"]["tasks"]["ade20k"]["overrides"]
    LINEAR_SEG_PROBE = [o for o in demo if o.lstrip("+~").startswith(("protocol", "mm.neck", "mm.auxiliary_head",
                                                                       "mm.decode_head"))]
    assert len(LINEAR_SEG_PROBE) == 9

    path = str(official_fixture())
    c = resolve("ade20k", "tiny", [f"data_root={layouts}", f"init={path}", f"runs_root={tmp_path / 'runs'}",
                                   *LINEAR_SEG_PROBE])
    built = segmentation.build(c)
    model, optim = built["model"], built["optimizer"]
    assert not model.with_neck and not model.with_auxiliary_head
    head = model.decode_head
    assert type(head).__name__ == "FCNHead" and isinstance(head.convs, torch.nn.Identity) and head.in_index == 3
    assert head.conv_seg.in_channels == model.backbone.dim
    model.train()
    assert model.backbone.frozen and not model.backbone.encoder_model.training and head.training
    trained = {id(p) for g in optim.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in head.parameters()}  # the encoder is in no param group

    run = run_transfer(c)
    assert run.done and 0.0 <= run.metrics["mIoU"] <= 100.0
    steps = [r for r in run.read_log() if "step" in r and "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"]
    with torch.serialization.safe_globals(mmseg_runner.MMENGINE_CHECKPOINT_GLOBALS):
        state = torch.load(run.path / "mm" / f"iter_{c['train']['iters']}.pth", map_location="cpu")["state_dict"]
    # the checkpoint keeps what was trained: the head, not the frozen encoder (rebuilt from init on resume)
    assert not [k for k in state if k.startswith("backbone.")]
    assert {f"decode_head.{k}" for k, _ in head.named_parameters()} <= set(state)
    loaded = build_encoder(path, c["transfer"]["model"], ["rgb@224"], c["train"]["image_size"]).state_dict()
    for k, v in loaded.items():  # the built model's encoder is the checkpoint's
        assert torch.equal(model.backbone.encoder_model.state_dict()[k], v), k
    head0 = segmentation.build(c)["model"].decode_head.conv_seg.weight  # the same seed's initial head
    assert not torch.equal(state["decode_head.conv_seg.weight"], head0)


def test_interrupted_run_resumes_from_its_mmengine_checkpoint(layouts, tmp_path, monkeypatch):
    c = resolve("ade20k", "tiny", {"data_root": str(layouts), "init": "random", "train.iters": "4",
                                   "train.checkpoint_interval": "2", "train.log_interval": "1"})
    run = open_run(tmp_path / "runs", c)
    real = mmseg_runner.RunStoreHook.after_train_iter

    def crash_at_3(self, runner, batch_idx, data_batch=None, outputs=None):
        real(self, runner, batch_idx, data_batch, outputs)
        if runner.iter + 1 == 3:
            raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(mmseg_runner.RunStoreHook, "after_train_iter", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        segmentation.run(c, run)
    ckpt = run.path / "mm" / "iter_2.pth"
    assert ckpt.exists() and not (run.path / "mm" / "iter_4.pth").exists()
    # why the allow-list exists: torch's default weights_only load rejects mmengine's own checkpoint objects
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(ckpt, map_location="cpu")
    with torch.serialization.safe_globals(mmseg_runner.MMENGINE_CHECKPOINT_GLOBALS):
        assert torch.load(ckpt, map_location="cpu")["meta"]["iter"] == 2

    monkeypatch.setattr(mmseg_runner.RunStoreHook, "after_train_iter", real)
    metrics = segmentation.run(c, run)
    log = run.read_log()
    resumed = [r for r in log if r.get("event") == "resumed"]
    assert [r["step"] for r in resumed] == [2]
    after = [r["step"] for r in log[log.index(resumed[0]):] if "loss" in r]
    assert after == [3, 4]
    assert (run.path / "mm" / "iter_4.pth").exists() and 0.0 <= metrics["mIoU"] <= 100.0


def test_logged_accuracy_is_mmsegs_value():
    from mmseg.models.decode_heads import decode_head
    from mmseg.models.losses import accuracy

    from transfer.mmseg_modules import top1_accuracy

    assert decode_head.accuracy is top1_accuracy  # every decode head logs through it
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 15, 20, 24, generator=g, requires_grad=True)
    target = torch.randint(0, 15, (3, 20, 24), generator=g)
    target[0, :5] = 255
    for ignore in (255, None, 3):
        assert torch.equal(top1_accuracy(pred, target, ignore_index=ignore), accuracy(pred, target, ignore_index=ignore))
    # what it does not cover goes to mmseg's own
    assert top1_accuracy(pred, target, topk=(1, 2)) == accuracy(pred, target, topk=(1, 2))
