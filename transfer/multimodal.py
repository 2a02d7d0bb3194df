"""NYUv2 RGB-D semantic segmentation: RGB patches and depth *tokens* through the 4M encoder's own embeddings.

Multimodal transfer as in 4M/MultiMAE: depth enters as ``tok_depth@224`` ids from the depth VQ-VAE tokenizer
(``transfer.depth_tokenizer``, frozen, run inside the backbone so crops, flips and slide windows stay aligned),
concatenated with the RGB tokens; the head reads the RGB tokens' block outputs. ``transfer.modalities=[rgb@224]`` gives
the RGB-only baseline on the *same* data pipeline (the depth channel is dropped by the backbone), so the two runs
differ only in the encoder's inputs.

Protocol (``configs/nyuv2_semseg_rgbd/paper.yaml``): MultiMAE's NYUv2 semseg fine-tuning
(EPFL-VILAB/MultiMAE cfgs/finetune/semseg/nyu/ft_nyu_200e_multimae-b_rgb-depth.yaml + run_finetuning_semseg.py
defaults): 40 classes (reduce_zero_label), 640 px, 200 epochs, AdamW lr 1e-4 (warmup 1 epoch from 1e-6, cosine to 0),
weight decay 0.05, layer decay 0.75, drop path 0.1, batch 2 per GPU on 8 GPUs = 16. The head differs: MultiMAE used
a ConvNeXt adapter; we use the same UperNet as ADE20K so one mmseg head serves both. Metric: mIoU (percent) + val_loss.
Data: ``<data_root>/nyuv2/{images,semseg,annotations}/{train,test}`` (semseg 0 = ignore; depth 16-bit mm).
"""
from __future__ import annotations

import json
from pathlib import Path

from transfer import mmseg_runner as R
from transfer.mm_runner import frozen_encoder_hooks
from transfer.mmseg_modules import DEPTH_TOKENS, RGB
from transfer.segmentation import encoder_decoder, seg_pipelines

TASK = "nyuv2_semseg_rgbd"


def classes_of(layout: Path, num_classes: int | None) -> list[str]:
    meta = layout / "meta.json"
    if meta.exists():
        classes = list(json.loads(meta.read_text())["semseg_classes"])
        if num_classes is not None and len(classes) != num_classes:
            raise ValueError(f"data.num_classes={num_classes} but {meta} lists {len(classes)} semseg classes; set data.num_classes=null")
        return classes
    if num_classes is None:
        raise FileNotFoundError(f"{meta} is missing: set data.num_classes (40 for NYUv2) or write the layout with fourm.data.layouts")
    return [f"class_{i}" for i in range(num_classes)]


def runner_kwargs(config: dict, work_dir, run=None) -> dict:
    layout = Path(config["data_root"]) / "nyuv2"
    R.check_folders(layout, [f"{k}/{s}" for k in ("images", "semseg", "annotations") for s in ("train", "test")], TASK)
    t = config["transfer"]
    modalities = list(t.get("modalities", [RGB, DEPTH_TOKENS]))
    tokenizer = t.get("depth_tokenizer")
    if DEPTH_TOKENS in modalities and not tokenizer:
        raise ValueError(f"{TASK}: transfer.depth_tokenizer=<depth tokenizer.safetensors or run folder> is required with "
                         f"{DEPTH_TOKENS} (train one with `fourm-bench tokenize`), or set transfer.modalities=[{RGB}]")
    classes = classes_of(layout, config.get("data", {}).get("num_classes"))
    train_pipe, test_pipe = seg_pipelines(config, load_extra=[dict(type="AppendDepthChannel")])
    backbone = R.backbone(config, modalities=modalities, depth_tokenizer=str(tokenizer) if tokenizer else None)

    def dataset(split, pipeline):
        return dict(type="NYUv2RGBDDataset", data_root=str(layout), metainfo=dict(classes=tuple(classes)), pipeline=pipeline,
                    data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"semseg/{split}",
                                     depth_map_path=f"annotations/{split}"))

    return R.runner_kwargs(
        config, model=encoder_decoder(config, len(classes), backbone, in_channels=4),
        train_dataset=dataset("train", train_pipe), val_dataset=dataset("test", test_pipe),
        evaluator=[dict(type="PerSampleIoUMetric", iou_metrics=["mIoU"], out_dir=str(run.path) if run else None),
                   dict(type="SegCrossEntropyMetric")],
        work_dir=work_dir, run=run)


def build(config: dict) -> dict:
    """Model, optimizer wrapper and dataloaders (no training): what a dry run checks."""
    return R.build_pieces(runner_kwargs(config, R.DRY_RUN_WORK_DIR))


def run(config: dict, run) -> dict:
    """Train and evaluate in ``run``'s folder; returns mIoU (percent), aAcc, mAcc and val_loss."""
    metrics = R.train_and_test(runner_kwargs(config, run.path / "mm", run), run, desc=TASK,
                               hooks=frozen_encoder_hooks(config, run))
    out = {"mIoU": metrics["mIoU"], "aAcc": metrics.get("aAcc"), "mAcc": metrics.get("mAcc"), "val_loss": metrics["val_loss"]}
    if "mIoU.ci95" in metrics:
        out["mIoU.ci95"] = metrics["mIoU.ci95"]
    return out
