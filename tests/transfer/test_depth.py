"""NYUv2 depth transfer through mmseg's DepthEstimator: protocol numbers, head and loss maths, dry run, tiny end-to-end."""
from __future__ import annotations

import math
import time

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmseg_testdata import fake_paper_layouts, official_fixture, world_layouts  # noqa: E402

from transfer import depth  # noqa: E402
from transfer.configs import resolve  # noqa: E402
from transfer.mmseg_modules import BerHuLoss, DepthDPTHead  # noqa: E402
from transfer.run import run_transfer  # noqa: E402


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return world_layouts(tmp_path_factory.mktemp("depth_world"))


def test_paper_config_is_the_multimae_dpt_protocol(tmp_path):
    c = resolve("nyuv2_depth", "paper", {"data_root": str(tmp_path), "init": "random"})
    t, mm = c["train"], c["mm"]
    assert (t["epochs"], t["batch_size"], t["lr"], t["weight_decay"], t["layer_decay"]) == (2000, 64, 1e-4, 1e-4, 0.75)
    assert (t["warmup_epochs"], t["warmup_start_factor"], t["schedule"], t["image_size"], t["drop_path"]) == (100, 0.01, "cosine", 256, 0.0)
    assert mm["decode_head"]["type"] == "DepthDPTHead" and mm["decode_head"]["loss_decode"]["type"] == "BerHuLoss"
    assert mm["decode_head"]["post_process_channels"] == [96, 192, 384, 768] and mm["decode_head"]["channels"] == 256
    assert mm["out_indices"] == [2, 5, 8, 11] and mm["decode_head"]["rescales"] == [4, 2, 1, 0.5]
    assert mm["evaluator"] == {"min_depth": 1e-3, "max_depth": 10.0, "crop_type": "nyu_crop"}


def test_berhu_is_l1_below_the_threshold_and_scaled_l2_above():
    loss = BerHuLoss(threshold=0.2)
    target = torch.tensor([[[[1.0, 2.0, 3.0, 0.0]]]])  # last pixel has no depth: ignored
    pred = torch.tensor([[[[1.1, 2.0, 8.0, 5.0]]]])
    # errors 0.1, 0, 5 on valid pixels; c = 0.2 * 5 = 1 -> 0.1, 0, (25 + 1) / 2
    assert float(loss(pred, target)) == pytest.approx((0.1 + 0.0 + 13.0) / 3)
    assert float(loss(pred, torch.zeros_like(target))) == 0.0


def test_dpt_head_predicts_positive_bounded_depth_at_input_resolution():
    head = DepthDPTHead(embed_dims=16, post_process_channels=[4, 8, 8, 16], channels=8, max_depth=10.0)
    feats = tuple(torch.randn(2, 16, 4, 4) for _ in range(4))
    out = head(feats)
    assert out.shape == (2, 1, 64, 64)
    assert (out > 0).all() and (out < 10).all()


def test_dpt_rescales_set_the_reassemble_strides():
    """Patch 16 (DPT's 4/2/1/0.5): mmseg's layers as they are. Patch 8: 2/1/0.5/0.25 gives the same strides 4/8/16/32,
    so the head ends at the input's resolution instead of twice it."""
    paper = DepthDPTHead(embed_dims=16, post_process_channels=[4, 8, 8, 16], channels=8)
    layers = paper.reassemble_blocks.resize_layers
    assert [type(m).__name__ for m in layers] == ["ConvTranspose2d", "ConvTranspose2d", "Identity", "Conv2d"]
    assert (layers[0].stride, layers[1].stride, layers[3].stride, layers[3].kernel_size) == ((4, 4), (2, 2), (2, 2), (3, 3))
    patch8 = DepthDPTHead(embed_dims=16, post_process_channels=[4, 8, 8, 16], channels=8, patch_size=8,
                          rescales=[2, 1, 0.5, 0.25])
    feats = tuple(torch.randn(2, 16, 14, 14) for _ in range(4))  # a 112 px image at patch 8
    sizes = [m(torch.randn(2, c, 14, 14)).shape[-1] for m, c in zip(patch8.reassemble_blocks.resize_layers, [4, 8, 8, 16])]
    assert sizes == [28, 14, 7, 4]  # strides 4/8/16/32 of 112 px (the last rounded up)
    assert patch8(feats).shape == (2, 1, 112, 112)
    assert paper(feats).shape == (2, 1, 224, 224)  # 4/2/1/0.5 on a patch-8 map: twice the input
    with pytest.raises(ValueError, match="rescale 0.3"):
        DepthDPTHead(embed_dims=16, post_process_channels=[4, 8, 8, 16], channels=8, rescales=[2, 1, 0.5, 0.3])


def test_paper_dry_run_builds_model_optimizer_and_data(tmp_path):
    root = fake_paper_layouts(tmp_path / "data", size=(120, 160))
    c = resolve("nyuv2_depth", "paper", {"data_root": str(root), "init": "random"})
    built = depth.build(c)
    model, optim = built["model"], built["optimizer"]
    assert type(model).__name__ == "DepthEstimator" and model.backbone.out_indices == [2, 5, 8, 11]
    lrs = {g["layer_id"]: g["lr"] for g in optim.optimizer.param_groups}
    assert lrs[13] == pytest.approx(1e-4) and lrs[0] == pytest.approx(1e-4 * 0.75**13)
    assert {g["weight_decay"] for g in optim.optimizer.param_groups} == {0.0, 1e-4}
    warm, cos = built["param_scheduler"]
    assert (warm["type"], warm["end"], warm["by_epoch"], cos["type"], cos["end"]) == ("LinearLR", 100, True, "CosineAnnealingLR", 2000)
    assert built["train_dataloader"].batch_size == 64
    sample = built["train_dataloader"].dataset[0]
    gt = sample["data_samples"].gt_depth_map.data
    assert sample["inputs"].shape[1:] == (256, 256) and gt.shape[-2:] == (256, 256)
    assert 0.5 <= float(gt[gt > 0].min()) and float(gt.max()) <= 9.0  # millimetres -> metres


@pytest.mark.parametrize("init", ["official", "random"])
def test_tiny_trains_and_evaluates_end_to_end(layouts, tmp_path, init):
    path = str(official_fixture()) if init == "official" else "random"
    c = resolve("nyuv2_depth", "tiny", {"data_root": str(layouts), "init": path, "runs_root": str(tmp_path / "runs")})
    t0 = time.perf_counter()
    run = run_transfer(c)
    print(f"nyuv2_depth tiny init={init}: {time.perf_counter() - t0:.1f}s metrics={run.metrics}")
    m = run.metrics
    assert {"delta1", "delta2", "delta3", "abs_rel", "rmse", "val_loss"} <= set(m)
    assert 0.0 <= m["delta1"] <= m["delta2"] <= m["delta3"] <= 1.0
    assert m["abs_rel"] > 0 and m["rmse"] > 0 and math.isfinite(m["val_loss"])
    steps = [r for r in run.read_log() if "loss" in r]
    assert steps[-1]["step"] == c["train"]["iters"] and steps[-1]["loss"] < steps[0]["loss"]


def test_lora_run_keeps_adapters_and_head_only(layouts, tmp_path):
    """protocol=lora end to end: adapter.safetensors holds the adapters and the head, the checkpoints hold no encoder
    weight, and the adapters moved from their zero start while the encoder stayed as loaded."""
    from safetensors.torch import load_file

    from transfer import mmseg_runner

    path = str(official_fixture())
    c = resolve("nyuv2_depth", "tiny", {"data_root": str(layouts), "init": path, "runs_root": str(tmp_path / "runs"),
                                        "protocol": "lora", "lora.rank": "2"})
    run = run_transfer(c)
    assert run.done and 0.0 <= run.metrics["delta1"] <= 1.0 and "delta1.ci95" in run.metrics
    adapter = load_file(str(run.path / "adapter.safetensors"))
    encoder_keys = [k for k in adapter if k.startswith("backbone.")]
    assert encoder_keys and all(".lora_A." in k or ".lora_B." in k for k in encoder_keys)
    assert any(k.startswith("decode_head.") for k in adapter)
    assert all(adapter[k].shape[0 if ".lora_A." in k else 1] == 2 for k in encoder_keys)  # rank 2
    assert any(adapter[k].abs().sum() > 0 for k in encoder_keys if ".lora_B." in k)
    with torch.serialization.safe_globals(mmseg_runner.MMENGINE_CHECKPOINT_GLOBALS):
        state = torch.load(run.path / "mm" / f"iter_{c['train']['iters']}.pth", map_location="cpu")["state_dict"]
    assert set(state) == set(adapter)  # the checkpoint keeps exactly what was trained


def test_dpt_head_at_the_large_recipes_reassemble_widths():
    """4M-L's depth recipe: 1024-d features reassembled to DPT's ViT-L widths (256, 512, 1024, 1024)."""
    from transfer.run import make_config

    cfg = make_config("nyuv2_depth", "paper", ["model=large", "init=random", "data_root=/datasets"])
    widths = cfg["mm"]["decode_head"]["post_process_channels"]
    head = DepthDPTHead(embed_dims=1024, post_process_channels=widths, channels=cfg["mm"]["decode_head"]["channels"])
    out = head(tuple(torch.randn(1, 1024, 2, 2) for _ in range(4)))
    assert out.shape == (1, 1, 32, 32) and [c.conv.in_channels for c in head.convs] == widths
