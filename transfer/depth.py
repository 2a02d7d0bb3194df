"""NYUv2 monocular depth: 4M encoder -> DPT depth head, trained and evaluated by mmsegmentation's ``DepthEstimator``.

Protocol (``configs/nyuv2_depth/paper.yaml``) follows MultiMAE's NYUv2 depth fine-tuning, which 4M reuses for its
depth transfer: DPT head on blocks 2/5/8/11 of ViT-B (reassemble 96/192/384/768, 256 fusion channels), BerHu loss,
AdamW lr 1e-4 (warmup from 1e-6 over 100 epochs, cosine to 0), weight decay 1e-4, layer decay 0.75, drop path 0,
2000 epochs at batch 64 on 256x256 crops of images resized to short side 256, flips and colour jitter
(source: EPFL-VILAB/MultiMAE cfgs/finetune/depth/ft_nyu_2000e_multimae-b.yaml and utils/dataset_regression.py).
Evaluation is mmseg's NYU protocol (``DepthMetric``: Eigen crop, depth in (1e-3, 10] m) on slide windows over the
short-side-256 image, predictions resized back to the original resolution; MultiMAE instead scored a 256 centre crop.

Metrics (``mmseg.evaluation.DepthMetric`` keys renamed): ``delta1``/``delta2``/``delta3`` fraction of valid pixels with
max(pred/gt, gt/pred) < 1.25^k, in [0, 1]; ``abs_rel`` mean |pred - gt| / gt (unitless); ``rmse`` in metres;
``val_loss`` the BerHu loss on the val images (metres). Data: ``<data_root>/nyuv2/{images,annotations}/{train,test}``
with 16-bit depth PNGs in millimetres (0 = missing).
"""
from __future__ import annotations

from pathlib import Path

from transfer import mmseg_runner as R
from transfer.mm_runner import frozen_encoder_hooks
from transfer.segmentation import IMAGENET_MEAN, IMAGENET_STD

TASK = "nyuv2_depth"
METRIC_KEYS = {"d1": "delta1", "d2": "delta2", "d3": "delta3", "abs_rel": "abs_rel", "rmse": "rmse",
               "sq_rel": "sq_rel", "rmse_log": "rmse_log", "log10": "log10", "silog": "silog"}


def depth_pipelines(config: dict) -> tuple[list, list]:
    mm, crop = config["mm"], R.pair(config["train"]["image_size"])
    tp, vp = mm["train_pipeline"], mm["test_pipeline"]
    load_depth = dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3)  # mm -> metres
    train = [dict(type="LoadImageFromFile"), load_depth,
             dict(type="RandomResize", scale=R.pair(tp["resize_scale"]), ratio_range=tuple(tp.get("ratio_range", (1.0, 1.0))),
                  keep_ratio=True),
             dict(type="RandomFlip", prob=float(tp.get("flip_prob", 0.5)))]
    if tp.get("photometric", True):
        train.append(dict(type="PhotoMetricDistortion"))
    train += [dict(type="RandomCrop", crop_size=crop), dict(type="PackSegInputs")]
    test = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=R.pair(vp["resize_scale"]), keep_ratio=True),
            load_depth, dict(type="PackSegInputs")]
    return train, test


def runner_kwargs(config: dict, work_dir, run=None) -> dict:
    layout = Path(config["data_root"]) / "nyuv2"
    R.check_folders(layout, ["images/train", "annotations/train", "images/test", "annotations/test"], TASK)
    mm, crop = config["mm"], R.pair(config["train"]["image_size"])
    dim = R.encoder_dim(str(config["transfer"]["init"]), config["transfer"]["model"])
    train_pipe, test_pipe = depth_pipelines(config)
    test_cfg = dict(mm["test_cfg"])
    if test_cfg.get("mode", "whole") != "whole":
        test_cfg.update(crop_size=R.pair(test_cfg["crop_size"]), stride=R.pair(test_cfg["stride"]))
    model = dict(
        type="DepthEstimator",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=0, size=crop),  # padded depth 0 = invalid, ignored by the loss
        backbone=R.backbone(config),
        decode_head=dict(**mm["decode_head"], embed_dims=dim),
        train_cfg=dict(),
        test_cfg=test_cfg,
    )

    def dataset(split, pipeline, test_mode):
        return dict(type="NYUDataset", data_root=str(layout), test_mode=test_mode, pipeline=pipeline,
                    data_prefix=dict(img_path=f"images/{split}", depth_map_path=f"annotations/{split}"))

    ev = mm["evaluator"]
    evaluator = [dict(type="PerSampleDepthMetric", min_depth_eval=float(ev["min_depth"]), max_depth_eval=float(ev["max_depth"]),
                      out_dir=str(run.path) if run else None,
                      crop_type=ev.get("crop_type")),
                 dict(type="DepthLossMetric", loss=dict(mm["decode_head"].get("loss_decode", {"type": "BerHuLoss"})))]
    return R.runner_kwargs(config, model=model, train_dataset=dataset("train", train_pipe, False),
                           val_dataset=dataset("test", test_pipe, True), evaluator=evaluator, work_dir=work_dir, run=run)


def build(config: dict) -> dict:
    """Model, optimizer wrapper and dataloaders (no training): what a dry run checks."""
    return R.build_pieces(runner_kwargs(config, R.DRY_RUN_WORK_DIR))


def run(config: dict, run) -> dict:
    """Train and evaluate in ``run``'s folder; returns delta1..3, abs_rel, rmse (+ the rest of DepthMetric) and val_loss."""
    metrics = R.train_and_test(runner_kwargs(config, run.path / "mm", run), run, desc=TASK,
                               hooks=frozen_encoder_hooks(config, run))
    out = {METRIC_KEYS[k]: v for k, v in metrics.items() if k in METRIC_KEYS}
    out.update({f"{METRIC_KEYS[k[:-5]]}.ci95": v for k, v in metrics.items() if k.endswith(".ci95") and k[:-5] in METRIC_KEYS})
    out["val_loss"] = metrics["val_loss"]
    return out
