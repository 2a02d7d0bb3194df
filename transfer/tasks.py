"""One :class:`TransferTask` per transfer task: what reports, tables, sweeps and benchmarks need to know about it.

A task is its module (``run(config, run)`` and ``build(config)``), its configs (``transfer/configs/<name>/``) and one
registration here. Adding Cityscapes is::

    register_task(TransferTask("cityscapes", module="transfer.segmentation", layout="cityscapes",
                               headline=(Headline("mIoU", "Cityscapes mIoU"),), reference_gpus=8,
                               global_batch=16, gpu_hours_b=20.0))

Nothing else lists tasks: ``fourm-bench transfer task=...``, the sweep's GPU-hours estimate and job shapes, the
report's verdict, the paper-layout table and the collect benchmark all read this registry.
"""
from __future__ import annotations

import dataclasses


PROTOCOLS = ("finetune", "linear", "knn", "lora")


@dataclasses.dataclass(frozen=True)
class Headline:
    """A metric a task is judged by: its key in ``metrics.json``, its direction, and how the paper's table shows it.

    ``column`` is its column key in ``results/published/4m_transfer.csv`` (None: not in the paper's table); ``scale``
    turns the stored value into the table's percent."""

    metric: str
    label: str
    higher_is_better: bool = True
    column: str | None = None
    latex: str | None = None
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class TransferTask:
    """name          the ``task=`` value and the folder of its configs (``transfer/configs/<name>/``)
    module        the module that runs it
    layout        the dataset layout it reads under ``data_root`` (``fourm.data.layouts.LAYOUTS`` for the world's)
    headline      its metrics, the first one decides the report's verdict
    reference_gpus, global_batch  the recipe's reference hardware and global batch (its ``_runtime.reference_gpus``
                  and ``train.batch_size`` must agree; tested)
    may_accumulate  whether a job shape may add gradient accumulation to keep the global batch on fewer GPUs
    gpu_hours_b   the GPU-hours of one 4M-B run on the reference hardware, for the sweep's estimate (A100)
    extra_metrics  other metrics it records, for tables and the collect benchmark
    configs       the folder of its ``<profile>.yaml`` configs (default ``transfer/configs/<name>/``)
    protocols     the ``transfer.protocol`` values it takes: ``finetune`` (the recipe), ``linear`` (encoder frozen,
                  the head trained), ``lora`` (encoder frozen, LoRA adapters and the head trained), ``knn``
                  (classification only: nearest neighbours on frozen features)
    """

    name: str
    module: str
    layout: str
    headline: tuple[Headline, ...]
    reference_gpus: int
    global_batch: int
    may_accumulate: bool = False
    gpu_hours_b: float = 0.0
    extra_metrics: tuple[str, ...] = ()
    configs: str | None = None
    summary: str = ""
    protocols: tuple[str, ...] = ("finetune", "linear", "lora")

    def __post_init__(self):
        if not self.headline:
            raise ValueError(f"transfer task {self.name!r}: give at least one headline metric")
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown or "finetune" not in self.protocols:
            raise ValueError(f"transfer task {self.name!r}: protocols {list(self.protocols)} must include 'finetune' "
                             f"and come from {list(PROTOCOLS)}")
        if self.gpu_hours_b <= 0:
            raise ValueError(f"transfer task {self.name!r}: gpu_hours_b must be > 0 (the sweep's estimate needs it)")

    @property
    def metric(self) -> str:
        """The metric that decides the verdict."""
        return self.headline[0].metric


_TASKS: dict[str, TransferTask] = {}


def register_task(task: TransferTask, *, overwrite: bool = False) -> TransferTask:
    if task.name in _TASKS and not overwrite:
        raise ValueError(f"transfer task {task.name!r} is already registered (pass overwrite=True to replace it)")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def get_task(name: str) -> TransferTask:
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown transfer task {name!r}; registered: {sorted(_TASKS)} "
                       "(register one with transfer.tasks.register_task)") from None


def tasks() -> dict[str, TransferTask]:
    """Every registered task by name, in registration order."""
    return dict(_TASKS)


# --- the paper's tasks (hardware and batch as in each recipe's paper.yaml; GPU-hours: A100 estimates for 4M-B) ---
for _t in [
    TransferTask("in1k", "transfer.classification", "in1k",
                 (Headline("top1", "IN1K top-1", column="in1k_top1", latex="IN1K top-1", scale=1.0),),
                 reference_gpus=32, global_batch=1024, may_accumulate=True, gpu_hours_b=40.0, extra_metrics=("top5",),
                 summary="ImageNet-1K classification, fine-tuned (timm)", protocols=("finetune", "linear", "knn", "lora")),
    TransferTask("coco", "transfer.detection", "coco",
                 (Headline("bbox_mAP", "COCO AP box", column="coco_ap_box", latex=r"COCO AP$^{\mathrm{box}}$", scale=100.0),
                  Headline("segm_mAP", "COCO AP mask", column="coco_ap_mask", latex=r"COCO AP$^{\mathrm{mask}}$", scale=100.0)),
                 reference_gpus=64, global_batch=64, gpu_hours_b=120.0, summary="COCO detection and instance segmentation (mmdet)"),
    TransferTask("ade20k", "transfer.segmentation", "ade20k",
                 (Headline("mIoU", "ADE20K mIoU", column="ade20k_miou", latex="ADE20K mIoU", scale=1.0),),
                 reference_gpus=8, global_batch=16, gpu_hours_b=16.0, extra_metrics=("aAcc",),
                 summary="ADE20K semantic segmentation (mmseg)"),
    TransferTask("nyuv2_depth", "transfer.depth", "nyuv2",
                 (Headline("delta1", "NYUv2 δ1", column="nyuv2_delta1", latex=r"NYUv2 $\delta_1$", scale=100.0),),
                 reference_gpus=8, global_batch=64, gpu_hours_b=2.0, extra_metrics=("abs_rel",),
                 summary="NYUv2 depth estimation (mmseg)"),
    TransferTask("nyuv2_semseg_rgbd", "transfer.multimodal", "nyuv2",
                 (Headline("mIoU", "NYUv2 RGB-D mIoU"),),
                 reference_gpus=8, global_batch=16, gpu_hours_b=2.0, summary="NYUv2 semantic segmentation from RGB and depth"),
]:
    register_task(_t)
