"""ADE20K semantic segmentation: 4M encoder -> Feature2Pyramid -> UperNet (+ FCN auxiliary), trained by mmsegmentation.

The protocol of BEiT/MAE/MultiMAE/4M on ADE20K (``configs/ade20k/paper.yaml``): 512 crops, AdamW lr 1e-4, wd 0.05,
layer decay 0.65, drop path 0.1, 160k iterations at batch 16, linear warmup 1.5k then poly, slide inference
(crop 512, stride 341), BN on one device. Metric: mmseg ``IoUMetric`` mIoU (percent), plus pixel cross-entropy
``val_loss``. Data: ``<data_root>/ade20k/{images,annotations}/{training,validation}`` (labels 0 = ignore).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fourm import distributed as D
from transfer import mmseg_runner as R
from transfer.mm_runner import frozen_encoder_hooks

TASK = "ade20k"
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def dataset_classes(layout_root: Path, num_classes: int | None) -> list[str]:
    """Class names: ``data.num_classes`` (150 = ADE20K's own list), or the ``meta.json`` the world layouts write."""
    meta = layout_root / "meta.json"
    if num_classes is None:
        if not meta.exists():
            raise FileNotFoundError(f"{meta} is missing: set data.num_classes (150 for real ADE20K) or write the layout "
                                    "with fourm.data.layouts, which records its classes there")
        return list(json.loads(meta.read_text())["classes"])
    if num_classes == 150 and not meta.exists():
        from mmseg.datasets import ADE20KDataset

        return list(ADE20KDataset.METAINFO["classes"])
    if meta.exists():
        classes = list(json.loads(meta.read_text())["classes"])
        if len(classes) != num_classes:
            raise ValueError(f"data.num_classes={num_classes} but {meta} lists {len(classes)} classes; set data.num_classes=null")
        return classes
    return [f"class_{i}" for i in range(num_classes)]


def seg_pipelines(config: dict, load_extra: list[dict] | None = None) -> tuple[list, list]:
    """mmseg train/test pipelines from ``mm.train_pipeline`` / ``mm.test_pipeline`` (``load_extra`` runs after the
    photometric step, e.g. AppendDepthChannel)."""
    mm, crop = config["mm"], R.pair(config["train"]["image_size"])
    tp, vp = mm["train_pipeline"], mm["test_pipeline"]
    extra = list(load_extra or [])
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True)]
    if tp.get("photometric", True):  # before load_extra: it needs the 3-channel uint8 image
        train.append(dict(type="PhotoMetricDistortion"))
    train += extra + [
        dict(type="RandomResize", scale=R.pair(tp["resize_scale"]), ratio_range=tuple(tp["ratio_range"]), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=float(tp.get("cat_max_ratio", 1.0))),
        dict(type="RandomFlip", prob=float(tp.get("flip_prob", 0.5))),
        dict(type="PackSegInputs"),
    ]
    test = [dict(type="LoadImageFromFile"), *extra, dict(type="Resize", scale=R.pair(vp["resize_scale"]), keep_ratio=True),
            dict(type="LoadAnnotations", reduce_zero_label=True), dict(type="PackSegInputs")]
    return train, test


def decode_head(head: dict, dim: int, num_classes: int, norm_cfg: dict) -> dict:
    """The decode head over the pyramid: all four levels, or the one level ``head["in_index"]`` (an int) names."""
    head = dict(head)
    levels = head.pop("in_index", [0, 1, 2, 3])
    in_channels = dim if isinstance(levels, int) else [dim] * len(levels)
    if head.get("type") == "FCNHead" and head.get("num_convs", 2) == 0:
        head["channels"] = in_channels  # a linear head (1x1 conv on the features): mmseg requires channels == input
    return dict(**head, in_channels=in_channels, in_index=levels, num_classes=num_classes, norm_cfg=norm_cfg,
                align_corners=False)


def encoder_decoder(config: dict, num_classes: int, backbone: dict, in_channels: int = 3) -> dict:
    """EncoderDecoder: backbone -> Feature2Pyramid (``mm.neck``; null: the encoder's maps as they are) -> decode head
    (+ auxiliary head), from the ``mm`` section."""
    mm, crop = config["mm"], R.pair(config["train"]["image_size"])
    dim = R.encoder_dim(str(config["transfer"]["init"]), config["transfer"]["model"])
    norm_cfg = dict(mm.get("norm_cfg", {"type": "BN", "requires_grad": True}))
    if norm_cfg["type"] == "BN" and torch.cuda.is_available() and D.detect().distributed:
        norm_cfg["type"] = "SyncBN"  # the batch statistics of the global batch, as one device computes them
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if in_channels == 4:  # RGB (already RGB order) + depth in metres, passed through unnormalised
        mean, std = mean + [0.0], std + [1.0]
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=mean, std=std, bgr_to_rgb=in_channels == 3,
                               pad_val=0, seg_pad_val=255, size=crop),
        backbone=backbone,
        neck=dict(**mm["neck"], embed_dim=dim, norm_cfg=norm_cfg) if mm.get("neck") else None,
        decode_head=decode_head(mm["decode_head"], dim, num_classes, norm_cfg),
        train_cfg=dict(),
        test_cfg={**mm["test_cfg"], **({"crop_size": R.pair(mm["test_cfg"]["crop_size"]),
                                         "stride": R.pair(mm["test_cfg"]["stride"])} if mm["test_cfg"].get("mode") == "slide" else {})},
    )
    if mm.get("auxiliary_head"):
        model["auxiliary_head"] = dict(**mm["auxiliary_head"], in_channels=dim, num_classes=num_classes,
                                       norm_cfg=norm_cfg, align_corners=False)
    return model


def runner_kwargs(config: dict, work_dir, run=None) -> dict:
    layout = Path(config["data_root"]) / "ade20k"
    R.check_folders(layout, ["images/training", "annotations/training", "images/validation", "annotations/validation"], TASK)
    classes = dataset_classes(layout, config.get("data", {}).get("num_classes"))
    train_pipe, test_pipe = seg_pipelines(config)

    def dataset(split, pipeline):
        return dict(type="BaseSegDataset", data_root=str(layout), img_suffix=".jpg", seg_map_suffix=".png",
                    reduce_zero_label=True, metainfo=dict(classes=tuple(classes)),
                    data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"), pipeline=pipeline)

    return R.runner_kwargs(
        config, model=encoder_decoder(config, len(classes), R.backbone(config)),
        train_dataset=dataset("training", train_pipe), val_dataset=dataset("validation", test_pipe),
        evaluator=[dict(type="PerSampleIoUMetric", iou_metrics=["mIoU"], out_dir=str(run.path) if run else None),
                   dict(type="SegCrossEntropyMetric")],
        work_dir=work_dir, run=run)


def build(config: dict) -> dict:
    """Model, optimizer wrapper and dataloaders (no training): what a dry run checks."""
    return R.build_pieces(runner_kwargs(config, R.DRY_RUN_WORK_DIR))


def run(config: dict, run) -> dict:
    """Train and evaluate in ``run``'s folder (mmengine work dir ``<run>/mm``, resumed if present); returns metrics."""
    metrics = R.train_and_test(runner_kwargs(config, run.path / "mm", run), run, desc=TASK,
                               hooks=frozen_encoder_hooks(config, run))
    out = {"mIoU": metrics["mIoU"], "aAcc": metrics.get("aAcc"), "mAcc": metrics.get("mAcc"), "val_loss": metrics["val_loss"]}
    if "mIoU.ci95" in metrics:
        out["mIoU.ci95"] = metrics["mIoU.ci95"]
    return out
