"""Our transfer config -> an mmengine ``Runner`` for mmsegmentation, trained and tested inside a run folder.

Shared by ADE20K segmentation, NYUv2 depth and NYUv2 RGB-D segmentation. The task modules build the model, data and
evaluator pieces; this module adds what every mmseg task does the same way: the layer-decay optimizer, warmup + poly or
cosine schedule, iteration- or epoch-based loop, checkpoints in ``<run>/mm`` (a re-run resumes from the latest), the
run-store log with a tqdm bar, and metrics from ``runner.test()``.

Scope and checkpoint loading (torch >= 2.6 against mmengine 0.10.7) are :mod:`transfer.mm_runner`'s, as for mmdet.
"""
from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path

from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope

import transfer.layer_decay  # noqa: F401  (registers FourMLayerDecayOptimizerConstructor)
import transfer.mmseg_modules  # noqa: F401  (registers the backbone, heads, transforms, metrics)
from transfer.adapter import encoder_config, protocol_encoder_args
from fourm import distributed as D
from transfer.mm_runner import (RunStoreHook, checkpoint_globals, dist_backend, launcher, model_wrapper, rank_batch,
                                runner_context)

SCOPE = "mmseg"
DRY_RUN_WORK_DIR = "dry-run-not-written"  # build_pieces never creates a Runner, so nothing is written there


MMENGINE_CHECKPOINT_GLOBALS = list(checkpoint_globals())


def schedule(train: dict, by_epoch: bool) -> list[dict]:
    """Linear warmup from ``warmup_start_factor`` then poly (power ``poly_power``) or cosine decay to 0."""
    total = int(train["epochs"] if by_epoch else train["iters"])
    warm = int(train.get("warmup_epochs" if by_epoch else "warmup_iters", 0) or 0)
    common = dict(by_epoch=by_epoch, convert_to_iter_based=by_epoch) if by_epoch else dict(by_epoch=False)
    if warm >= total:
        unit = "epochs" if by_epoch else "iters"
        raise ValueError(f"train.warmup_{unit}={warm} must be smaller than train.{unit}={total}")
    out = []
    if warm:
        out.append(dict(type="LinearLR", start_factor=float(train.get("warmup_start_factor", 1e-6)), begin=0, end=warm, **common))
    kind = train.get("schedule", "poly")
    if kind == "poly":
        out.append(dict(type="PolyLR", eta_min=0.0, power=float(train.get("poly_power", 1.0)), begin=warm, end=total, **common))
    elif kind == "cosine":
        out.append(dict(type="CosineAnnealingLR", eta_min=0.0, T_max=total - warm, begin=warm, end=total, **common))
    else:
        raise ValueError(f"train.schedule: {kind!r} is not poly or cosine")
    return out


def optim_wrapper(train: dict) -> dict:
    """AdamW with layer-wise LR decay over the 4M encoder (our registered constructor)."""
    return dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=float(train["lr"]), betas=tuple(train.get("betas", (0.9, 0.999))),
                       weight_decay=float(train["weight_decay"])),
        constructor="FourMLayerDecayOptimizerConstructor",
        paramwise_cfg=dict(layer_decay_rate=float(train["layer_decay"])),
        **({"clip_grad": dict(max_norm=float(train["clip_grad"]))} if train.get("clip_grad") else {}),
    )


def dataloader(dataset: dict, batch_size: int, train: bool, num_workers: int, seed: int | None = None) -> dict:
    sampler = dict(type="InfiniteSampler", shuffle=True, seed=seed) if train else dict(type="DefaultSampler", shuffle=False)
    return dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0,
                sampler=sampler, dataset=dataset)


def check_folders(root: Path, folders: list[str], what: str) -> None:
    """One error naming every missing folder of a dataset layout."""
    missing = [str(root / f) for f in folders if not (root / f).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{what}: data_root layout incomplete, missing {missing}. Point data_root=<dir> at a folder holding "
            f"{root.name}/ (e.g. `fourm-bench world --out W --num 8 --layouts {root.name}` then data_root=W/layouts)"
        )


def runner_kwargs(config: dict, *, model: dict, train_dataset: dict, val_dataset: dict, evaluator: list[dict],
                  work_dir: str | os.PathLike, run=None) -> dict:
    """Everything ``mmengine.runner.Runner(**kw)`` needs, from our config and the task's model/data/evaluator pieces."""
    train = config["train"]
    by_epoch = train.get("epochs") is not None
    if by_epoch == (train.get("iters") is not None):
        raise ValueError("train: set exactly one of train.iters and train.epochs")
    runtime = config.get("_runtime") or {}  # how to run, not part of the run id; train.* is the fallback
    workers = int(runtime.get("num_workers", train.get("num_workers", 0)))
    log_interval = int(runtime.get("log_interval", train.get("log_interval", 50)))
    seed = int(config.get("seed", 0))
    if by_epoch:
        loop = dict(type="EpochBasedTrainLoop", max_epochs=int(train["epochs"]), val_interval=int(train.get("val_interval") or train["epochs"]))
        ckpt = dict(type="CheckpointHook", by_epoch=True, interval=int(train.get("checkpoint_interval") or 1), max_keep_ckpts=2)
    else:
        loop = dict(type="IterBasedTrainLoop", max_iters=int(train["iters"]), val_interval=int(train.get("val_interval") or train["iters"]))
        ckpt = dict(type="CheckpointHook", by_epoch=False, interval=int(train.get("checkpoint_interval") or train["iters"]), max_keep_ckpts=2)
    kw = dict(
        model=ConfigDict(model),  # mmseg reads test_cfg.mode etc. as attributes
        work_dir=str(work_dir),
        train_dataloader=dataloader(train_dataset, rank_batch(train), True, workers, seed),
        val_dataloader=dataloader(val_dataset, 1, False, workers),
        test_dataloader=dataloader(val_dataset, 1, False, workers),
        train_cfg=loop,
        val_cfg=dict(type="ValLoop") if train.get("val_interval") else None,
        test_cfg=dict(type="TestLoop"),
        optim_wrapper=optim_wrapper(train),
        param_scheduler=schedule(train, by_epoch),
        val_evaluator=evaluator if train.get("val_interval") else None,
        test_evaluator=evaluator,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=by_epoch),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=ckpt,
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend=dist_backend())),
        log_processor=dict(by_epoch=by_epoch),
        log_level="WARNING",
        default_scope=SCOPE,
        randomness=dict(seed=seed, deterministic=False),
        experiment_name=f"{config['transfer']['task']}-{uuid.uuid4().hex[:8]}",
        launcher=launcher(),
        cfg=dict(model_wrapper_cfg=model_wrapper()),  # the Runner reads the DDP wrapper from here only
    )
    if not kw["val_cfg"]:
        kw["val_dataloader"] = None
    return kw


def _total_iters(runner) -> int:
    loop = runner.train_loop
    return int(loop.max_iters)


def build_runner(kw: dict, resume: bool = True):
    """A Runner for ``kw``; resumes from ``work_dir``'s latest checkpoint when there is one.

    Call it inside ``transfer.mm_runner.runner_context("mmseg")`` and keep using the runner there.
    """
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import find_latest_checkpoint

    kw = copy.deepcopy(kw)
    kw["resume"] = bool(resume and find_latest_checkpoint(kw["work_dir"]))
    return Runner(**kw)


def train_and_test(kw: dict, run=None, desc: str = "transfer", hooks=()) -> dict:
    """Train (resuming if ``work_dir`` holds a checkpoint), then test; returns the test metrics as plain floats.
    ``hooks``: more hooks for the runner (the protocol's, :func:`transfer.mm_runner.frozen_encoder_hooks`)."""
    D.setup()
    with runner_context(SCOPE):
        runner = build_runner(kw)
        for hook in hooks:
            runner.register_hook(hook)
        if run is not None:
            interval = int(kw["default_hooks"]["logger"]["interval"])
            runner.register_hook(RunStoreHook(run, total=_total_iters(runner), interval=interval, desc=desc))
        runner.train()
        metrics = runner.test()
    return {k: float(v) for k, v in metrics.items()}


def build_pieces(kw: dict) -> dict:
    """Model, optimizer wrapper and dataloaders of a Runner config, built without training (dry runs and tests)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    from mmseg.registry import MODELS

    with DefaultScope.overwrite_default_scope(SCOPE):
        model = MODELS.build(copy.deepcopy(kw["model"]))
        optim = build_optim_wrapper(model, copy.deepcopy(kw["optim_wrapper"]))
        train_loader = Runner.build_dataloader(copy.deepcopy(kw["train_dataloader"]), seed=0)
        val_loader = Runner.build_dataloader(copy.deepcopy(kw["test_dataloader"]))
    return {"model": model, "optimizer": optim, "train_dataloader": train_loader, "val_dataloader": val_loader,
            "param_scheduler": kw["param_scheduler"], "runner_kwargs": kw}


def encoder_dim(init: str, model: str) -> int:
    """Width of the encoder ``build_encoder(init, model)`` will give (read from checkpoint metadata, no weights loaded)."""
    return int(encoder_config(init, model)["dim"])


def backbone(config: dict, modalities=("rgb@224",), depth_tokenizer: str | None = None) -> dict:
    """The ``FourMBackbone`` config of a transfer config (init, model, crop size, drop path, out_indices of a 12-block
    base, and the protocol: ``linear`` freezes the encoder, ``lora`` freezes it and adds ``lora:`` adapters)."""
    t, train, mm = config["transfer"], config["train"], config.get("mm", {})
    return dict(type="FourMBackbone", init=str(t["init"]), model=t["model"], modalities=list(modalities),
                image_size=int(train["image_size"]), drop_path_rate=float(train.get("drop_path", 0.0)),
                base_out_indices=list(mm.get("out_indices", (3, 5, 7, 11))), depth_tokenizer=depth_tokenizer,
                **protocol_encoder_args(config))


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)
