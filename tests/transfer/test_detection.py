"""COCO detection transfer: paper protocol numbers, window attention, official-fixture loading, tiny end-to-end runs
through mmdet's Runner (train + CocoMetric) and resuming from an mmengine checkpoint under torch >= 2.6."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer.configs import resolve
from transfer.detection import coco_summary, mmdet_config, schedule_iters


def _mm_available() -> bool:
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
    except ImportError:
        return False
    return True


needs_mm = pytest.mark.skipif(not _mm_available(), reason="mmcv (with ops) / mmdet not installed")


# --- data -------------------------------------------------------------------------------------------------------------
def _write_fake_coco(root: Path, size: int = 64, num: int = 2) -> Path:
    """A hand-made COCO tree: ``num`` images per split, one square object each (polygon masks), 3 categories."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train2017", "val2017"):
        (root / "coco" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(1, num + 1):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "coco" / split / f"{i}.jpg")
            images.append({"id": i, "file_name": f"{i}.jpg", "width": size, "height": size})
            x0, y0, w = 8 * i, 10, 20
            anns.append({"id": i, "image_id": i, "category_id": 1 + i % 3, "bbox": [x0, y0, w, w], "area": w * w,
                         "iscrowd": 0, "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + w, x0, y0 + w]]})
        cats = [{"id": k, "name": n} for k, n in enumerate(["a", "b", "c"], start=1)]
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def world_coco(tmp_path_factory) -> Path:
    """A small world (6 train / 4 val scenes at 128 px) in the COCO layout, written by the real generators."""
    from fourm.data.layouts import write_layouts
    from fourm.data.world import generate

    root = tmp_path_factory.mktemp("coco_world")
    generate(str(root / "world"), 6, size=128, seed=0, split="train")
    generate(str(root / "world"), 4, size=128, seed=0, split="val")
    write_layouts(root / "world", root / "layouts", which=("coco",))
    return root / "layouts"


def _config(profile: str, data_root: Path | str = "unused", **train) -> dict:
    """The resolved config, composed exactly as ``fourm-bench transfer task=coco`` composes it."""
    cfg = resolve("coco", profile, {"init": "random", "data_root": str(data_root)})
    cfg["train"].update(train)
    return cfg


def _tiny(data_root: Path, **train) -> dict:
    return _config("tiny", data_root, **train)


# --- paper protocol ----------------------------------------------------------------------------------------------------
def test_paper_profile_carries_the_protocol_numbers():
    cfg = _config("paper")
    t = cfg["train"]
    assert cfg["transfer"]["task"] == "coco"
    assert (t["epochs"], t["batch_size"], t["image_size"]) == (100, 64, 1024)
    assert (t["lr"], t["weight_decay"], t["layer_decay"]) == (1e-4, 0.1, 0.7)
    assert t["drop_path"] == 0.1
    assert cfg["mm"]["lsj"] == {"ratio_range": [0.1, 2.0], "flip_prob": 0.5, "allow_negative_crop": True, "pad_val": 114}
    assert cfg["mm"]["roi"]["stage_iou"] == [0.5, 0.6, 0.7]
    assert cfg["mm"]["roi"]["bbox_convs"] == 4 and cfg["mm"]["roi"]["mask_convs"] == 4
    assert cfg["mm"]["backbone"] == {"window_size": 14, "global_blocks": [2, 5, 8, 11]}
    # 100 epochs of COCO train2017 (118k images) at batch 64 is ViTDet's schedule, to the iteration
    assert schedule_iters(t, 118000) == (184375, [163889, 177546])


def test_paper_mmdet_config_is_cascade_mask_rcnn_with_lsj(tmp_path):
    cfg = _config("paper", _write_fake_coco(tmp_path))
    mm = mmdet_config(cfg, tmp_path / "work")
    model = mm["model"]
    assert model["type"] == "CascadeRCNN" and model["roi_head"]["type"] == "CascadeRoIHead"
    assert model["roi_head"]["num_stages"] == 3
    heads = model["roi_head"]["bbox_head"]
    assert [h["type"] for h in heads] == ["Shared4Conv1FCBBoxHead"] * 3
    assert all(h["norm_cfg"]["type"] == "FourMLayerNorm2d" and h["num_classes"] == 3 for h in heads)
    assert model["roi_head"]["mask_head"]["type"] == "FCNMaskHead"
    assert model["roi_head"]["mask_head"]["norm_cfg"]["type"] == "FourMLayerNorm2d"
    assert [s["assigner"]["pos_iou_thr"] for s in model["train_cfg"]["rcnn"]] == [0.5, 0.6, 0.7]
    assert model["backbone"]["type"] == "FourMViTDet" and model["backbone"]["image_size"] == 1024
    assert model["backbone"]["drop_path_rate"] == 0.1
    assert model["neck"]["in_channels"] == 768 and model["rpn_head"]["anchor_generator"]["strides"] == [4, 8, 16, 32, 64]
    steps = {p["type"]: p for p in mm["train_dataloader"]["dataset"]["pipeline"]}
    assert steps["RandomResize"]["scale"] == (1024, 1024) and steps["RandomResize"]["ratio_range"] == (0.1, 2.0)
    assert steps["RandomCrop"]["crop_size"] == (1024, 1024) and steps["RandomCrop"]["allow_negative_crop"] is True
    assert steps["Pad"]["size"] == (1024, 1024)
    opt = mm["optim_wrapper"]
    assert opt["constructor"] == "FourMLayerDecayOptimizerConstructor"
    assert opt["paramwise_cfg"]["layer_decay_rate"] == 0.7
    assert opt["optimizer"] == {"type": "AdamW", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.1}
    assert mm["train_dataloader"]["batch_size"] == 64
    assert mm["val_evaluator"]["type"] == "CocoMetric" and mm["val_evaluator"]["metric"] == ["bbox", "segm"]
    # 2 images at batch 64: 100 epochs round up to 4 iterations (this is how the real schedule scales, too)
    assert mm["train_cfg"]["max_iters"] == 4


def test_runner_config_is_formatted_once_and_reads_like_mmengines(tmp_path):
    from mmengine.config import Config

    from transfer.mm_runner import formatted_once_config

    mm = mmdet_config(_config("tiny", _write_fake_coco(tmp_path)), tmp_path / "work")
    cfg = formatted_once_config(mm)
    text = cfg.pretty_text
    assert text == Config(mm).pretty_text and "CascadeRCNN" in text
    assert cfg.pretty_text is text  # cached: not formatted again
    assert copy.deepcopy(cfg).pretty_text == text  # the runner keeps a deep copy
    assert "_pretty_text" not in cfg._cfg_dict and cfg.model["type"] == "CascadeRCNN"  # not a config key


def test_anchor_and_roi_strides_follow_the_encoder_patch_size(tmp_path):
    """A patch-8 encoder's pyramid has strides 2..32, not the 4..64 of patch 16 (anchors would sit at twice the scale)."""
    import torch as _torch

    from fourm.models import save_checkpoint
    from fourm.models.fourm import FourM

    _torch.manual_seed(0)
    ckpt = tmp_path / "patch8.safetensors"
    save_checkpoint(FourM(["rgb@224"], ["tok_rgb@224"], dim=32, encoder_depth=2, decoder_depth=1, num_heads=2,
                          image_size=64, patch_size=8), ckpt)
    cfg = _config("tiny", _write_fake_coco(tmp_path))
    cfg["transfer"]["init"] = str(ckpt)
    model = mmdet_config(cfg, tmp_path / "work")["model"]
    assert model["rpn_head"]["anchor_generator"]["strides"] == [2, 4, 8, 16, 32]
    assert model["roi_head"]["bbox_roi_extractor"]["featmap_strides"] == [2, 4, 8, 16]
    assert model["roi_head"]["mask_roi_extractor"]["featmap_strides"] == [2, 4, 8, 16]
    assert model["neck"]["in_channels"] == 32


def test_anchor_sizes_follow_mm_rpn_anchor_scales(tmp_path):
    """Anchor side = scale x stride: the paper's [8] gives 32..512 px at strides 4..64; small objects need a smaller scale."""
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    cfg = _config("paper", _write_fake_coco(tmp_path))
    assert cfg["mm"]["rpn"]["anchor_scales"] == [8]

    def square_sides(config):
        gen = dict(mmdet_config(config, tmp_path / "work")["model"]["rpn_head"]["anchor_generator"])
        gen.pop("type")
        anchors = AnchorGenerator(**gen).base_anchors  # per level: one anchor per ratio (0.5, 1, 2)
        return [float(a[1, 2] - a[1, 0]) for a in anchors]

    assert square_sides(cfg) == [32.0, 64.0, 128.0, 256.0, 512.0]
    cfg["mm"]["rpn"]["anchor_scales"] = [4]
    assert square_sides(cfg) == [16.0, 32.0, 64.0, 128.0, 256.0]


def test_missing_coco_layout_names_the_files(tmp_path):
    cfg = _config("tiny", tmp_path)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        mmdet_config(cfg, tmp_path / "work")


def test_coco_summary_counts_trainable_images(tmp_path):
    root = _write_fake_coco(tmp_path, num=3)
    classes, kept = coco_summary(root / "coco" / "annotations" / "instances_train2017.json")
    assert classes == ("a", "b", "c") and kept == 3


# --- the backbone ------------------------------------------------------------------------------------------------------
@needs_mm
def test_window_attention_is_local_and_matches_global_when_one_window():
    from transfer.mmdet_modules import FourMViTDet, windowed_block

    torch.manual_seed(0)
    bb = FourMViTDet(init="random", model="fm_nano_2e_2d_swiglu_nobias", image_size=96, drop_path_rate=0.0,
                     window_size=4, global_blocks=[]).eval()
    blk = bb.encoder_model.encoder[0]
    x = torch.randn(1, 6 * 6, bb.out_channels)  # 6x6 grid, window 4: padded to 8x8, four windows
    with torch.no_grad():
        y = windowed_block(blk, x, (6, 6), 4)
        x2 = x.clone()
        x2[0, 0] += torch.randn(x.shape[-1])  # token (0, 0) lives in the top-left window (rows 0-3, cols 0-3)
        y2 = windowed_block(blk, x2, (6, 6), 4)
        changed = (y2 - y).abs().amax(-1).reshape(6, 6) > 1e-6
        assert changed[:4, :4].all() and not changed[4:, :].any() and not changed[:, 4:].any()
        # padding is masked out: same result as running the 6x6 grid's real 4x2 bottom-left window on its own
        window = x.reshape(6, 6, -1)[4:6, 0:4].reshape(1, 8, -1)
        torch.testing.assert_close(y.reshape(6, 6, -1)[4:6, 0:4].reshape(1, 8, -1), blk(window), atol=1e-5, rtol=1e-5)
        # a window covering the grid is plain global attention
        torch.testing.assert_close(windowed_block(blk, x, (6, 6), 8), blk(x))
        # all-global backbone = the encoder's own forward (tokens after the final norm)
        img = torch.randn(2, 3, 96, 96)
        bb.global_blocks = [0, 1]
        (feat,) = bb(img)
        ref = bb.encoder_model.forward_features(img)
        torch.testing.assert_close(feat.flatten(2).transpose(1, 2), ref)
        assert feat.shape == (2, bb.out_channels, 6, 6)


@needs_mm
def test_simple_fpn_levels():
    from transfer.mmdet_modules import FourMSimpleFPN

    neck = FourMSimpleFPN(in_channels=64, out_channels=16, num_outs=5)
    outs = neck((torch.randn(1, 64, 8, 8),))
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert all(o.shape[1] == 16 for o in outs)


@needs_mm
def test_official_fixture_loads_into_the_backbone_with_every_encoder_key(official_fixture_dir):
    from safetensors.torch import load_file

    from transfer.mmdet_modules import FourMViTDet

    FIXTURE = official_fixture_dir / "tiny_4m7.safetensors"
    bb = FourMViTDet(init=str(FIXTURE), image_size=64, window_size=2, global_blocks=[1])
    file = load_file(str(FIXTURE))
    state = bb.encoder_model.state_dict()
    missing = [k for k in state if k not in file]
    assert not missing
    for k, v in state.items():
        if k.endswith("pos_emb"):  # resized from the file's 14x14 grid to 4x4
            assert v.shape == (1, 16, 8) and file[k].shape == (1, 196, 8)
        else:
            torch.testing.assert_close(v, file[k], msg=k)
    assert bb.out_channels == 8 and bb.encoder_model.depth == 2
    (feat,) = bb(torch.randn(1, 3, 64, 64))
    assert feat.shape == (1, 8, 4, 4) and torch.isfinite(feat).all()


def test_protocols_set_up_the_vitdet_backbone(official_fixture_dir, tmp_path):
    """protocol=linear freezes the windowed encoder (eval mode, no gradients); protocol=lora trains adapters only."""
    from transfer.adapter import protocol_encoder_args
    from transfer.mmdet_modules import FourMViTDet

    FIXTURE = str(official_fixture_dir / "tiny_4m7.safetensors")
    for protocol in ("linear", "lora"):
        cfg = resolve("coco", "tiny", {"init": FIXTURE, "data_root": str(tmp_path), "protocol": protocol})
        bb = FourMViTDet(init=FIXTURE, image_size=64, window_size=2, global_blocks=[1], **protocol_encoder_args(cfg))
        bb.train()
        trained = [n for n, p in bb.named_parameters() if p.requires_grad]
        if protocol == "linear":
            assert not trained and not bb.encoder_model.training
        else:
            assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained) and bb.encoder_model.training
        (feat,) = bb(torch.randn(1, 3, 64, 64))
        assert feat.shape == (1, 8, 4, 4) and feat.requires_grad == (protocol == "lora")


@needs_mm
def test_roi_features_are_the_neck_maps_roi_aligned(world_coco, tmp_path):
    """mmdet's RoI extractor (mmcv's compiled RoIAlign) on our neck's maps equals torchvision's RoIAlign on them.

    mmcv's op reads the raw buffer as NCHW: a neck whose LayerNorm2d returned a permuted (channels-last) view gave the
    box and mask heads scrambled features, with no error, and detection never learned (AP 0 for any init).
    """
    from mmdet.structures.bbox import bbox2roi
    from torchvision.ops import roi_align

    from transfer.detection import build

    cfg = _tiny(world_coco)
    model = build(cfg, tmp_path / "work")["model"].eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        feats = model.extract_feat(x)
        assert all(f.is_contiguous() for f in feats)
        boxes = [torch.tensor([[8.0, 10.0, 40.0, 30.0], [60.0, 64.0, 120.0, 126.0]]),
                 torch.tensor([[0.0, 0.0, 50.0, 70.0]])]
        rois = bbox2roi(boxes)
        extractor = model.roi_head.bbox_roi_extractor[0]
        levels = extractor.map_roi_levels(rois, len(extractor.featmap_strides))
        got = extractor(feats[:len(extractor.featmap_strides)], rois)
        for i, level in enumerate(levels.tolist()):
            stride = extractor.featmap_strides[level]
            want = roi_align(feats[level], rois[i:i + 1], output_size=7, spatial_scale=1 / stride, sampling_ratio=0,
                             aligned=True)
            torch.testing.assert_close(got[i:i + 1], want, atol=1e-5, rtol=1e-4)


# --- through mmdet's Runner ---------------------------------------------------------------------------------------------
@needs_mm
def test_paper_config_builds_model_optimizer_and_dataloaders(tmp_path):
    from transfer.detection import build

    cfg = _config("paper", _write_fake_coco(tmp_path))
    cfg["train"]["num_workers"] = 0  # the protocol's 8 workers would only oversubscribe a test machine
    built = build(cfg, tmp_path / "work")
    model, opt = built["model"], built["optimizer"]
    assert type(model).__name__ == "CascadeRCNN" and len(model.roi_head.bbox_head) == 3
    assert model.backbone.encoder_model.depth == 12 and model.backbone.out_channels == 768
    groups = {(g["layer_id"], g["weight_decay"] > 0): g for g in opt.param_groups}
    assert type(opt).__name__ == "AdamW"
    assert groups[(13, True)]["lr"] == pytest.approx(1e-4) and groups[(13, True)]["weight_decay"] == 0.1
    assert groups[(1, True)]["lr"] == pytest.approx(1e-4 * 0.7 ** 12)
    assert groups[(0, False)]["weight_decay"] == 0.0
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = next(iter(built["train_dataloader"]))
    assert len(batch["inputs"]) == 2 and all(tuple(im.shape) == (3, 1024, 1024) for im in batch["inputs"])
    val = next(iter(built["val_dataloader"]))
    assert tuple(val["inputs"][0].shape) == (3, 1024, 1024)


@needs_mm
def test_tiny_run_trains_and_evaluates_with_coco_metric(world_coco, tmp_path):
    from fourm.runs import open_run
    from transfer.detection import run

    cfg = _tiny(world_coco, iters=3)
    r = open_run(tmp_path / "runs", cfg)
    metrics = run(cfg, r)
    for k in ("bbox_mAP", "segm_mAP"):
        assert 0.0 <= metrics[k] <= 1.0
    assert metrics["iters"] == 3
    log = r.read_log()
    steps = [rec["step"] for rec in log if "loss" in rec]
    assert steps == [1, 2, 3]
    assert all(np.isfinite(rec["loss"]) and rec["loss"] > 0 for rec in log if "loss" in rec)
    assert any(rec.get("event") == "val" and "coco/bbox_mAP" in rec for rec in log)
    assert (Path(r.path) / "mmdet" / "iter_3.pth").exists()
    assert metrics["val_detections"] > 0  # score_thr 0 in the tiny profile: every image keeps boxes


@needs_mm
def test_no_box_above_score_thr_is_ap_zero_not_a_failed_evaluation(world_coco, tmp_path):
    """CocoMetric returns {} when no box clears score_thr (a weak model at the paper's 0.05): that is AP 0."""
    from fourm.runs import open_run
    from transfer.detection import run

    cfg = _tiny(world_coco, iters=1)
    cfg["mm"]["test"]["score_thr"] = 1.01  # softmax scores never reach it
    r = open_run(tmp_path / "runs", cfg)
    for attempt in range(2):  # the second resumes at max_iters and only evaluates
        metrics = run(cfg, r)
        assert metrics["val_detections"] == 0, attempt
        assert metrics["bbox_mAP"] == 0.0 and metrics["segm_mAP"] == 0.0
    assert [rec["step"] for rec in r.read_log() if "loss" in rec] == [1]
    assert sum(rec.get("event") == "val" for rec in r.read_log()) == 2


@needs_mm
def test_run_resumes_from_its_mmengine_checkpoint(world_coco, tmp_path):
    """A run stopped after 2 iterations continues at iteration 3 from <run>/mmdet/iter_2.pth (torch 2.14 refuses that
    file under its default weights_only=True, so this only works because the runner trusts its own folder)."""
    from fourm.runs import open_run
    from transfer.detection import run

    cfg = _tiny(world_coco, iters=2)
    r = open_run(tmp_path / "runs", cfg)
    run(cfg, r)
    ckpt = Path(r.path) / "mmdet" / "iter_2.pth"
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(ckpt)
    state = torch.load(ckpt, weights_only=False)
    first = state["state_dict"]["backbone.encoder_model.encoder.0.attn.qkv.weight"].clone()
    longer = copy.deepcopy(cfg)
    longer["train"]["iters"] = 4
    metrics = run(longer, r)  # same folder: resumes
    steps = [rec["step"] for rec in r.read_log() if "loss" in rec]
    assert steps == [1, 2, 3, 4]  # 3 and 4 were trained after the resume, 1-2 were not repeated
    last = torch.load(Path(r.path) / "mmdet" / "iter_4.pth", weights_only=False)
    assert last["meta"]["iter"] == 4
    assert not torch.equal(last["state_dict"]["backbone.encoder_model.encoder.0.attn.qkv.weight"], first)
    assert 0.0 <= metrics["bbox_mAP"] <= 1.0


ITERS_FIT = 40  # the squares below, at lr 2e-3: bbox AP 0.137 (a detector that cannot localise scores ~0)
AP_FIT = 0.1


def _write_squares_coco(root: Path, size: int = 64, num: int = 8) -> Path:
    """Coloured squares on grey (the colour is the class), the same images as train2017 and val2017: a detector that
    works fits them; one that cannot localise or classify (misaligned RoIs, wrong targets) scores near 0 AP."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 40, 220)}
    images, anns = [], []
    for split in ("train2017", "val2017"):
        (root / "coco" / split).mkdir(parents=True, exist_ok=True)
    for i in range(1, num + 1):
        img = np.full((size, size, 3), 110, np.uint8)
        w = int(rng.integers(16, 29))
        x0, y0 = (int(v) for v in rng.integers(2, size - w - 2, 2))
        cat = 1 + i % 3
        img[y0:y0 + w, x0:x0 + w] = colours[cat]
        for split in ("train2017", "val2017"):
            Image.fromarray(img).save(root / "coco" / split / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
        anns.append({"id": i, "image_id": i, "category_id": cat, "bbox": [x0, y0, w, w], "area": w * w, "iscrowd": 0,
                     "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + w, x0, y0 + w]]})
    cats = [{"id": k, "name": n} for k, n in enumerate(["red", "green", "blue"], start=1)]
    (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@needs_mm
def test_the_detector_fits_what_it_was_trained_on(tmp_path):
    """AP on the training images after a short schedule: a threshold only a working detector passes."""
    from fourm.runs import open_run
    from transfer.detection import run

    root = _write_squares_coco(tmp_path / "data")
    cfg = _tiny(root, iters=ITERS_FIT, lr=2e-3, warmup_iters=10, image_size=64, batch_size=4, val_batch_size=4)
    cfg["mm"]["lsj"]["ratio_range"] = [1.0, 1.0]
    cfg["mm"]["rpn"]["anchor_scales"] = [4]
    metrics = run(cfg, open_run(tmp_path / "runs", cfg))
    print({k: metrics[k] for k in ("bbox_mAP", "segm_mAP")})
    assert metrics["bbox_mAP"] >= AP_FIT, metrics
