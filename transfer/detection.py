"""COCO detection + instance segmentation transfer: 4M encoder -> ViTDet simple pyramid -> Cascade Mask R-CNN (mmdet).

The resolved task config (transfer/configs/coco/{paper,tiny}.yaml through transfer.configs.resolve) becomes one plain
mmengine config in :func:`mmdet_config`; :func:`run` trains and evaluates it with mmengine's Runner under mmdet's scope and returns
CocoMetric's ``bbox_mAP`` / ``segm_mAP`` (fractions 0-1, pycocotools), resuming from the run folder's last mmengine
checkpoint when one exists. :func:`build` makes the same model, optimizer and dataloaders without training (dry runs).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from fourm.data.vitdet import STAGE_TARGET_STDS
from transfer.adapter import encoder_config, protocol_encoder_args
from transfer.mm_runner import (RunStoreHook, dist_backend, formatted_once_config, launcher, model_wrapper, rank_batch,
                                runner_context)

IMAGENET_MEAN = [123.675, 116.28, 103.53]  # RGB, 0-255: what 4M's RGB encoder was trained with
IMAGENET_STD = [58.395, 57.12, 57.375]
LN2D = "FourMLayerNorm2d"
MIN_IMAGE_SIZE = 32  # CocoDataset filter_cfg.min_size: smaller training images are skipped


# --- data ---------------------------------------------------------------------------------------------------------
def coco_paths(config: dict) -> dict:
    """Folders and annotation files of ``<data_root>/coco`` (standard COCO 2017 layout), checked to exist."""
    root = Path(config["data_root"]) / "coco"
    paths = {"root": root,
             "train_ann": root / "annotations" / "instances_train2017.json", "train_img": root / "train2017",
             "val_ann": root / "annotations" / "instances_val2017.json", "val_img": root / "val2017"}
    missing = [str(p) for k, p in paths.items() if k != "root" and not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"data_root={config['data_root']!r}: COCO layout incomplete, missing {missing}. Expected "
            "<data_root>/coco/annotations/instances_{train,val}2017.json and <data_root>/coco/{train,val}2017/; "
            "write it with `fourm-bench world --layouts coco` or point data_root= at a COCO copy")
    return paths


def coco_summary(ann_file: str | os.PathLike) -> tuple[tuple[str, ...], int]:
    """(class names ordered by category id, number of images CocoDataset keeps for training: annotated, >= 32 px)."""
    ann = json.loads(Path(ann_file).read_text())
    cats = sorted(ann.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise ValueError(f"{ann_file}: no 'categories'; a COCO instances file lists its classes there")
    annotated = {a["image_id"] for a in ann.get("annotations", []) if not a.get("iscrowd", 0)}
    kept = sum(1 for im in ann.get("images", [])
               if im["id"] in annotated and min(im["width"], im["height"]) >= MIN_IMAGE_SIZE)
    return tuple(c["name"] for c in cats), kept


def schedule_iters(train: dict, num_images: int) -> tuple[int, list[int]]:
    """(max_iters, lr milestones): ``train.iters`` if set, else ``epochs`` over ``num_images`` at the global batch."""
    if train.get("iters"):
        max_iters = int(train["iters"])
    else:
        max_iters = max(1, math.ceil(train["epochs"] * num_images / train["batch_size"]))
    milestones = [min(max_iters, max(1, round(f * max_iters))) for f in train.get("lr_step_fractions", [])]
    return max_iters, milestones


# --- the mmdet config ----------------------------------------------------------------------------------------------
def _pipelines(size: int, lsj: dict) -> tuple[list, list]:
    scale = (size, size)
    pad = dict(img=(lsj["pad_val"],) * 3)
    train = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="RandomFlip", prob=float(lsj.get("flip_prob", 0.5))),
        dict(type="RandomResize", scale=scale, ratio_range=tuple(lsj["ratio_range"]), keep_ratio=True),
        dict(type="RandomCrop", crop_type="absolute_range", crop_size=scale, recompute_bbox=True,
             allow_negative_crop=bool(lsj["allow_negative_crop"])),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
        dict(type="Pad", size=scale, pad_val=pad),
        dict(type="PackDetInputs"),
    ]
    test = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=scale, keep_ratio=True),
        dict(type="Pad", size=scale, pad_val=pad),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    return train, test


def _model(config: dict, num_classes: int) -> dict:
    t, mm, train = config["transfer"], config["mm"], config["train"]
    size = int(train["image_size"])
    norm = dict(type=LN2D, eps=1e-6, requires_grad=True)
    ch, roi, rpn = mm["neck"]["out_channels"], mm["roi"], mm["rpn"]
    enc = encoder_config(str(t["init"]), t["model"])
    dim, patch = int(enc["dim"]), int(enc.get("patch_size", 16))
    # the pyramid is built from the stride-`patch` map (16 for every released 4M model; 8 for the demo's): anchors and
    # RoI extractors must use the strides the features really have
    strides = [int(patch / s) for s in mm["neck"]["scales"]]
    strides += [strides[-1] * 2 ** (k + 1) for k in range(mm["neck"]["num_outs"] - len(strides))]
    if len(roi["stage_iou"]) != len(STAGE_TARGET_STDS) or len(roi["stage_loss_weights"]) != len(STAGE_TARGET_STDS):
        raise ValueError(f"mm.roi.stage_iou / stage_loss_weights: Cascade R-CNN here has {len(STAGE_TARGET_STDS)} "
                         f"stages, got {roi['stage_iou']} / {roi['stage_loss_weights']}")
    if roi["bbox_convs"] == 4:
        head_type = dict(type="Shared4Conv1FCBBoxHead")
    else:  # the same head with another conv count
        head_type = dict(type="ConvFCBBoxHead", num_shared_convs=roi["bbox_convs"], num_shared_fcs=1)
    bbox_heads = [dict(
        **head_type, in_channels=ch,
        conv_out_channels=roi["conv_out_channels"], fc_out_channels=roi["fc_out_channels"], roi_feat_size=7,
        num_classes=num_classes, norm_cfg=norm, reg_class_agnostic=True,
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)) for stds in STAGE_TARGET_STDS]
    rcnn_train = [dict(
        assigner=dict(type="MaxIoUAssigner", pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                      match_low_quality=False, ignore_iof_thr=-1),
        sampler=dict(type="RandomSampler", num=roi["rcnn_samples"], pos_fraction=0.25, neg_pos_ub=-1,
                     add_gt_as_proposals=True),
        mask_size=28, pos_weight=-1, debug=False) for iou in roi["stage_iou"]]
    return dict(
        type="CascadeRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True,
                               pad_size_divisor=32, pad_mask=True,
                               batch_augments=[dict(type="BatchFixedSizePad", size=(size, size), pad_mask=True)]),
        backbone=dict(type="FourMViTDet", init=str(t["init"]), model=t["model"], image_size=size,
                      drop_path_rate=float(train["drop_path"]), window_size=mm["backbone"]["window_size"],
                      global_blocks=list(mm["backbone"]["global_blocks"]),
                      **protocol_encoder_args(config)),
        neck=dict(type="FourMSimpleFPN", in_channels=dim, out_channels=ch, scales=list(mm["neck"]["scales"]),
                  num_outs=mm["neck"]["num_outs"], norm_cfg=norm),
        rpn_head=dict(
            type="RPNHead", in_channels=ch, feat_channels=rpn["feat_channels"], num_convs=rpn["num_convs"],
            anchor_generator=dict(type="AnchorGenerator", scales=list(rpn["anchor_scales"]), ratios=[0.5, 1.0, 2.0],
                                  strides=strides),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(
            type="CascadeRoIHead", num_stages=len(roi["stage_iou"]), stage_loss_weights=list(roi["stage_loss_weights"]),
            bbox_roi_extractor=dict(type="SingleRoIExtractor", out_channels=ch, featmap_strides=strides[:4],
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
            bbox_head=bbox_heads,
            mask_roi_extractor=dict(type="SingleRoIExtractor", out_channels=ch, featmap_strides=strides[:4],
                                    roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0)),
            mask_head=dict(type="FCNMaskHead", num_convs=roi["mask_convs"], in_channels=ch,
                           conv_out_channels=roi["conv_out_channels"], num_classes=num_classes, norm_cfg=norm,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=0, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=rpn["train_proposals"], max_per_img=rpn["train_proposals"],
                              nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=rcnn_train),
        test_cfg=dict(
            rpn=dict(nms_pre=rpn["test_proposals"], max_per_img=rpn["test_proposals"],
                     nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=config["mm"]["test"]["score_thr"], nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=config["mm"]["test"]["max_per_img"], mask_thr_binary=0.5)),
    )


def mmdet_config(config: dict, work_dir: str | os.PathLike) -> dict:
    """The full mmengine/mmdet config (plain dict) of a resolved COCO transfer config."""
    train, mm = config["train"], config["mm"]
    paths = coco_paths(config)
    classes, num_images = coco_summary(paths["train_ann"])
    val_classes, _ = coco_summary(paths["val_ann"])
    if val_classes != classes:
        raise ValueError(f"{paths['val_ann']}: categories {val_classes} differ from the training file's {classes}")
    max_iters, milestones = schedule_iters(train, num_images)
    size = int(train["image_size"])
    train_pipe, test_pipe = _pipelines(size, mm["lsj"])
    metainfo = dict(classes=list(classes))
    workers = int(train.get("num_workers", 0))
    batch = rank_batch(train)
    loader = dict(num_workers=workers, persistent_workers=workers > 0)
    val_every = int(train.get("val_interval_iters") or 0) or max_iters
    ckpt_every = int(train.get("checkpoint_interval_iters") or 0) or max_iters
    amp = bool(train.get("amp")) and _cuda()
    sched = [dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=int(train["warmup_iters"]))]
    if milestones:
        sched.append(dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters, milestones=milestones, gamma=0.1))
    return dict(
        default_scope="mmdet",
        # mmengine keys its logger/scope/visualizer singletons by this name (+ a timestamp): keep mmdet runs apart
        # from mmseg runs started in the same second in the same process
        experiment_name=f"coco_{Path(work_dir).parent.name}",
        work_dir=str(work_dir),
        model=_model(config, len(classes)),
        train_dataloader=dict(
            batch_size=batch, **loader, sampler=dict(type="DefaultSampler", shuffle=True),
            dataset=dict(type="CocoDataset", data_root=str(paths["root"]), metainfo=metainfo,
                         ann_file=str(paths["train_ann"]), data_prefix=dict(img=str(paths["train_img"]) + "/"),
                         filter_cfg=dict(filter_empty_gt=True, min_size=MIN_IMAGE_SIZE), pipeline=train_pipe)),
        val_dataloader=dict(
            batch_size=int(train.get("val_batch_size", 1)), **loader, drop_last=False,
            sampler=dict(type="DefaultSampler", shuffle=False),
            dataset=dict(type="CocoDataset", data_root=str(paths["root"]), metainfo=metainfo,
                         ann_file=str(paths["val_ann"]), data_prefix=dict(img=str(paths["val_img"]) + "/"),
                         test_mode=True, pipeline=test_pipe)),
        val_evaluator=dict(type="CocoMetric", ann_file=str(paths["val_ann"]), metric=["bbox", "segm"],
                           format_only=False),
        optim_wrapper=dict(
            type="AmpOptimWrapper" if amp else "OptimWrapper",
            constructor="FourMLayerDecayOptimizerConstructor",
            paramwise_cfg=dict(layer_decay_rate=float(train["layer_decay"])),
            optimizer=dict(type="AdamW", lr=float(train["lr"]), betas=tuple(train["betas"]),
                           weight_decay=float(train["weight_decay"]))),
        param_scheduler=sched,
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=val_every),
        val_cfg=dict(type="ValLoop"),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=int(train.get("log_interval", 50))),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=ckpt_every, save_last=True,
                            max_keep_ckpts=2),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend=dist_backend())),
        log_processor=dict(type="LogProcessor", window_size=50, by_epoch=False),
        log_level="WARNING",
        randomness=dict(seed=int(config.get("seed", 0)), deterministic=False),
        resume=True,  # picks up <work_dir>/last_checkpoint when a previous attempt wrote one
        load_from=None,
        launcher=launcher(),
        model_wrapper_cfg=model_wrapper(),
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- running ---------------------------------------------------------------------------------------------------------
def _run_store_hook(run, max_iters: int, log_every: int):
    class CocoRunStoreHook(RunStoreHook):
        """The run-store hook, plus the last validation metrics and how many boxes were predicted."""

        def __init__(self):
            super().__init__(run, max_iters, log_every, desc="coco transfer")
            self.metrics: dict = {}
            self.detections = 0

        def before_val_epoch(self, runner):
            self.detections = 0

        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.detections += sum(len(sample.pred_instances) for sample in outputs or [])

        def after_val_epoch(self, runner, metrics=None):
            self.metrics = dict(metrics or {})
            if not self.metrics and self.detections == 0:
                # CocoMetric logs "results ... empty" and returns {} when no box clears test_cfg.rcnn.score_thr: that is
                # AP 0 (a weak model, e.g. random init at a short schedule), not a failed evaluation
                self.metrics = {k: 0.0 for k in METRIC_KEYS}
            run.log(step=runner.iter, event="val", detections=self.detections,
                    **{k: float(v) for k, v in self.metrics.items()})

    return CocoRunStoreHook()


def _registered():
    """Import what registers our modules (backbone, neck, norm, optimizer constructor) and mmdet's own."""
    import mmdet.utils

    import transfer.layer_decay  # noqa: F401
    import transfer.mmdet_modules  # noqa: F401

    mmdet.utils.register_all_modules(init_default_scope=False)


def build(config: dict, work_dir: str | os.PathLike | None = None) -> dict:
    """Model, optimizer wrapper and dataloaders of a COCO transfer config, without training (dry runs, inspection)."""
    import tempfile

    from mmengine.runner import Runner

    _registered()
    work_dir = work_dir or tempfile.mkdtemp(prefix="fourm_coco_")
    cfg = mmdet_config(config, work_dir)

    with runner_context("mmdet"):
        runner = Runner.from_cfg(formatted_once_config(cfg))
        optim_wrapper = runner.build_optim_wrapper(cfg["optim_wrapper"])
        return {"model": runner.model, "optim_wrapper": optim_wrapper, "optimizer": optim_wrapper.optimizer,
                "train_dataloader": runner.build_dataloader(cfg["train_dataloader"]),
                "val_dataloader": runner.build_dataloader(cfg["val_dataloader"]), "mm_config": cfg, "runner": runner}


METRIC_KEYS = {"coco/bbox_mAP": "bbox_mAP", "coco/bbox_mAP_50": "bbox_mAP_50", "coco/bbox_mAP_75": "bbox_mAP_75",
               "coco/segm_mAP": "segm_mAP", "coco/segm_mAP_50": "segm_mAP_50", "coco/segm_mAP_75": "segm_mAP_75"}


def run(config: dict, run) -> dict:
    """Train and evaluate in ``<run>/mmdet`` (resuming its last checkpoint); returns bbox/segm mAP (fractions)."""
    from mmengine.runner import Runner

    from fourm import distributed as D
    from transfer.mm_runner import frozen_encoder_hooks

    _registered()
    D.setup()
    cfg = mmdet_config(config, Path(run.path) / "mmdet")
    max_iters = cfg["train_cfg"]["max_iters"]
    with runner_context("mmdet"):
        runner = Runner.from_cfg(formatted_once_config(cfg))
        hook = _run_store_hook(run, max_iters, max(1, int(config["train"].get("log_interval", 50))))
        runner.register_hook(hook)
        for extra in frozen_encoder_hooks(config, run):
            runner.register_hook(extra)
        runner.train()
        if not hook.metrics:  # resumed at max_iters: the training loop had nothing left to do, so evaluate now
            runner.val()  # the hook's after_val_epoch records the metrics (AP 0 when no box was kept)
    missing = [k for k in ("coco/bbox_mAP", "coco/segm_mAP") if k not in hook.metrics]
    if missing:
        raise RuntimeError(f"CocoMetric returned no {missing}; got {sorted(hook.metrics)}")
    metrics = {short: float(hook.metrics[k]) for k, short in METRIC_KEYS.items() if k in hook.metrics}
    losses = [r for r in run.read_log() if "loss" in r]
    if losses:
        metrics["train_loss"] = float(losses[-1]["loss"])
    metrics["iters"] = int(max_iters)
    metrics["val_detections"] = int(hook.detections)
    return metrics
