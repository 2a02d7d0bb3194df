"""ImageNet-1K fine-tuning of the 4M encoder, MAE fine-tune style, with timm's augmentation, mixup and schedule.

Model: the last block's tokens -> mean over tokens -> LayerNorm -> linear head (MAE's ``global_pool``: the encoder's
final norm is dropped; ``train.global_pool=false`` pools after it instead). Optimiser: AdamW over
layer-wise LR decay groups (:func:`transfer.adapter.layer_decay_param_groups`), cosine schedule with linear warmup,
stepped per optimizer update. Data: torchvision ImageFolder at ``<data_root>/in1k/{train,val}``.

Data-parallel under torchrun or a multi-task SLURM step (:mod:`fourm.distributed`): ``train.batch_size`` is the
global batch of one optimizer update, split as per-rank batch x ranks x ``train.accum_iter``. Every rank reads its
share of one permutation per epoch (``DistributedSampler``, seeded by the run's seed), and each image's augmentation
draws from its own seed (run seed, epoch, image index), so a step sees the same images, augmented the same way, on
any number of ranks. Validation shards the images without padding and sums the counts over ranks.

Resuming: after every epoch ``checkpoint.pt`` in the run folder holds model, optimizer and epoch (tensors, numbers,
strings only: it loads with ``torch.load(weights_only=True)``). Every epoch reseeds python/numpy/torch from
(seed, epoch), so a resumed run follows the same data order, augmentations and drop-path draws as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from fourm import distributed as D
from transfer.adapter import adapt_encoder, build_encoder, layer_decay_param_groups, protocol_encoder_args
from transfer.configs import ConfigError

CHECKPOINT = "checkpoint.pt"
MODALITY = "rgb@224"


class Classifier(nn.Module):
    """4M encoder + mean pooling + LayerNorm + linear head (parameters ``backbone.*``, ``fc_norm.*``, ``head.*``).

    With ``global_pool`` (the default, as MAE's fine-tuning and MultiMAE's linear output adapter) the mean is taken
    over the last block's tokens and the encoder's final norm is dropped: ``fc_norm`` normalises the pooled vector
    instead. On the demo world this kept what pretraining learned: pretrained 58.3 +- 1.0 vs random init 50.7 +- 2.6
    top-1 (3 seeds), against 45.1 +- 4.7 vs 47.6 +- 2.4 when pooling the final norm's tokens.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_init_std: float = 2e-5, global_pool: bool = True):
        super().__init__()
        if global_pool:
            backbone.encoder_norm = nn.Identity()
        self.backbone = backbone
        self.fc_norm = nn.LayerNorm(backbone.dim, eps=1e-6)
        self.head = nn.Linear(backbone.dim, num_classes)
        # MAE's fine-tune head init: near-zero logits so the first steps do not wreck the pretrained features
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)
        return self.head(self.fc_norm(tokens.mean(dim=1)))


# --- data ---------------------------------------------------------------------------------------------
class ClassFolder(ImageFolder):
    """ImageFolder whose label index comes from a given class list (folders may cover only some classes)."""

    def __init__(self, root: str | os.PathLike, classes: list[str], transform=None):
        self._given_classes = list(classes)
        super().__init__(str(root), transform=transform, allow_empty=True)

    def find_classes(self, directory):
        present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [c for c in present if c not in self._given_classes]
        if unknown:
            raise ConfigError(f"{directory}: class folders {unknown[:5]} are not in the class list "
                             f"({len(self._given_classes)} classes, from the train folders or meta.json)")
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}


def class_names(in1k_root: Path) -> list[str]:
    """Class list: ``meta.json``'s ``classes`` when the layout has one (the synthetic world's), else the train folders."""
    meta = in1k_root / "meta.json"
    if meta.exists():
        classes = json.loads(meta.read_text()).get("classes")
        if classes:
            return list(classes)
    train = in1k_root / "train"
    return sorted(e.name for e in os.scandir(train) if e.is_dir())


def posterize(img, bits_to_keep: int, **_):
    """Posterize that keeps 0 bits as a black image, as Pillow < 11 did.

    timm's RandAugment 'inc1' maps magnitude 10 (reached by m9 + mstd0.5 draws) to 0 bits; Pillow >= 11 raises there.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_posterize(transform) -> int:
    """Swap :func:`posterize` into every posterize op of timm RandAugment/AutoAugment in a Compose; returns how many."""
    fixed = 0
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []) or []:
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = posterize
                fixed += 1
    return fixed


def build_transforms(train_cfg: dict, data_cfg: dict):
    """timm transforms: RandomResizedCrop (``crop_scale``) + RandAugment + random erasing for training; resize + center
    crop for evaluation."""
    from timm.data import create_transform

    common = dict(input_size=train_cfg["image_size"], interpolation=train_cfg["interpolation"],
                  mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]))
    train_tf = create_transform(is_training=True, scale=tuple(train_cfg.get("crop_scale", (0.08, 1.0))),
                                auto_augment=train_cfg["auto_augment"], color_jitter=None,
                                re_prob=train_cfg["reprob"], re_mode=train_cfg["remode"], re_count=train_cfg["recount"],
                                **common)
    _fix_posterize(train_tf)
    eval_tf = create_transform(is_training=False, crop_pct=train_cfg["crop_pct"], **common)
    return train_tf, eval_tf


def build_datasets(config: dict):
    """(train, val, class names) from ``<data_root>/in1k``; missing folders or a wrong class count raise one clear error."""
    root = Path(config["data_root"]) / "in1k"
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"in1k: no {root / split}; data_root must hold in1k/{{train,val}}/<class>/*.JPEG (ImageNet layout). "
                f"For the synthetic world: fourm-bench world --out DIR --num N --layouts in1k (then data_root=DIR/layouts)")
    classes = class_names(root)
    expected = config["data"].get("num_classes")
    if expected is not None and expected != len(classes):
        raise ConfigError(f"in1k: {root} has {len(classes)} classes but data.num_classes={expected}; "
                         f"point data_root at the right dataset or pass data.num_classes=null")
    train_tf, eval_tf = build_transforms(config["train"], config["data"])
    train = ClassFolder(root / "train", classes, train_tf)
    val = ClassFolder(root / "val", classes, eval_tf)
    for name, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise FileNotFoundError(f"in1k: no images under {root / name}/<class>/")
    return train, val, classes


def keep_low_shot(train_set: ClassFolder, config: dict, classes: list[str]):
    """Reduce ``train_set`` in place to the low-shot subset of ``data.train_fraction`` / ``data.shots_per_class``;
    returns (the full listing, the kept indices) for the run's ``train_samples.txt``."""
    from transfer.probe import low_shot_indices, split_listing

    data = config["data"]
    listing = split_listing(train_set)
    kept = low_shot_indices(train_set.targets, data.get("train_fraction"), data.get("shots_per_class"),
                            int(data.get("subset_seed", 0)), classes)
    if len(kept) < len(listing):
        train_set.samples = [train_set.samples[i] for i in kept]
        train_set.imgs = train_set.samples
        train_set.targets = [s[1] for s in train_set.samples]
    return listing, kept


def check_data(config: dict) -> None:
    """What can be checked of the data before a job starts: the layout's folders, and a ``shots_per_class`` request
    against the class sizes (the one check that lists every training image)."""
    root = Path(config["data_root"]) / "in1k"
    for split in ("train", "val"):
        if not (root / split).is_dir():
            build_datasets(config)  # raises the layout's message
    if config["data"].get("shots_per_class") is not None:
        classes = class_names(root)
        keep_low_shot(ClassFolder(root / "train", classes), config, classes)


class SeededSamples(torch.utils.data.Dataset):
    """A dataset whose ``i``-th sample is drawn with python/numpy/torch seeded from (seed, epoch, i).

    The augmentation of an image then depends on the image, not on which rank or loader worker reads it, nor on what
    was read before; the caller's random state is left as it was."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getattr__(self, name: str):  # the wrapped dataset's attributes (classes, targets, transform, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = (self.seed * 1_000_003 + self.epoch * 7_919 + i * 104_729) % (2**31)
        saved = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
        random.seed(s)
        np.random.seed(s)
        torch.random.default_generator.manual_seed(s)
        try:
            return self.dataset[i]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.default_generator.set_state(saved[2])


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + ranks, ...``: every image on exactly one rank, none repeated (no padding)."""

    def __init__(self, size: int, env: D.DistEnv):
        self.indices = list(range(env.rank, size, env.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --- model, optimizer, schedule --------------------------------------------------------------------------
def peak_lr(train_cfg: dict) -> float:
    """``train.lr`` if set, else the linear scaling rule ``blr * batch_size / 256``."""
    return train_cfg["lr"] if train_cfg.get("lr") is not None else train_cfg["blr"] * train_cfg["batch_size"] / 256


def accum_iter(config: dict) -> int:
    """Forward/backward passes per update: a job shape's ``_runtime.accum_iter``, else ``train.accum_iter``."""
    return int((config.get("_runtime") or {}).get("accum_iter") or config["train"].get("accum_iter", 1))


def per_step_batch(train_cfg: dict, world_size: int = 1, accum: int | None = None) -> int:
    """Images per rank in one forward/backward: ``train.batch_size`` / (ranks x accumulation steps)."""
    bs, accum = train_cfg["batch_size"], accum or train_cfg.get("accum_iter", 1)
    try:
        step = D.split_batch(bs, world_size, accum)
    except D.BatchSplitError as e:
        raise ConfigError(f"in1k: {e} (train.accum_iter)") from None
    if train_cfg.get("mixup", 0) > 0 or train_cfg.get("cutmix", 0) > 0:
        if step % 2:
            raise ConfigError(f"mixup/cutmix in batch mode needs an even per-rank batch; got {step} "
                             f"(train.batch_size={bs} / {world_size} ranks / train.accum_iter={accum})")
    return step


def resolve_device(config: dict, local_rank: int = 0) -> torch.device:
    want = config.get("_runtime", {}).get("device", "auto")
    if want == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"_runtime.device={want!r} but CUDA is not available; pass _runtime.device=cpu or auto")
    return torch.device(want)


def build_model(config: dict, num_classes: int) -> Classifier:
    t = config["transfer"]
    encoder = build_encoder(t["init"], t["model"], (MODALITY,), image_size=config["train"]["image_size"],
                            drop_path_rate=config["train"]["drop_path"])
    adapt_encoder(encoder, lora=protocol_encoder_args(config)["lora"])  # linear / knn never build this model
    return Classifier(encoder, num_classes, head_init_std=config["train"]["head_init_std"],
                      global_pool=config["train"].get("global_pool", True))


def speed_options(encoder, config: dict, device: torch.device) -> None:
    """``_runtime.activation_checkpointing`` (null: on for large/xlarge encoders on GPU) and ``_runtime.compile``
    (each block, ``fullgraph=True``): how fast and in how much memory, never what is computed."""
    runtime = config.get("_runtime") or {}
    from fourm.models.factory import checkpoint_by_default

    ac = runtime.get("activation_checkpointing")
    encoder.checkpoint_blocks = checkpoint_by_default(config["transfer"]["model"], device) if ac is None else bool(ac)
    if runtime.get("compile"):
        for blk in encoder.encoder:
            blk.compile(fullgraph=True, dynamic=False)


def build_optimizer(model: Classifier, train_cfg: dict) -> torch.optim.AdamW:
    """AdamW over layer-decay groups. Each group's ``lr`` is the unscaled peak LR: the scheduler multiplies by ``lr_scale``."""
    lr = peak_lr(train_cfg)
    groups = layer_decay_param_groups(model, lr, train_cfg["weight_decay"], train_cfg["layer_decay"], model.backbone.depth)
    for g in groups:
        g["lr"] = lr  # timm's scheduler applies lr_scale itself; pre-scaled lrs would be scaled twice
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(train_cfg["betas"]), fused=True)  # fused: see fourm.pretrain.loop


def build_scheduler(optimizer, train_cfg: dict, updates_per_epoch: int):
    """timm cosine schedule over optimizer updates: linear warmup from 0 for ``warmup_epochs``, then cosine to min_lr."""
    from timm.scheduler import CosineLRScheduler

    updates_per_epoch = max(1, updates_per_epoch)
    warmup = int(round(train_cfg["warmup_epochs"] * updates_per_epoch))
    total = int(train_cfg["epochs"] * updates_per_epoch)
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=train_cfg["min_lr"],
                             warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def build_mixup(train_cfg: dict, num_classes: int):
    """timm Mixup (None when mixup and cutmix are off)."""
    from timm.data import Mixup

    if train_cfg["mixup"] <= 0 and train_cfg["cutmix"] <= 0:
        return None
    return Mixup(mixup_alpha=train_cfg["mixup"], cutmix_alpha=train_cfg["cutmix"], prob=train_cfg["mixup_prob"],
                 switch_prob=train_cfg["mixup_switch_prob"], mode=train_cfg["mixup_mode"],
                 label_smoothing=train_cfg["smoothing"], num_classes=num_classes)


def build_criterion(train_cfg: dict, mixup) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        return SoftTargetCrossEntropy()  # mixup already folds label smoothing into the soft targets
    if train_cfg["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=train_cfg["smoothing"])
    return nn.CrossEntropyLoss()


def build(config: dict) -> dict:
    """Everything a run needs: model (on device; ``train_model`` is its DDP wrapper on several ranks), optimizer,
    scheduler, loaders, mixup, criterion, classes, device, the distributed environment."""
    from torch.utils.data.distributed import DistributedSampler

    env = D.setup()
    torch.manual_seed(config["seed"])
    train_cfg, runtime = config["train"], config.get("_runtime", {})
    train_set, val_set, classes = build_datasets(config)
    listing, kept = keep_low_shot(train_set, config, classes)
    accum = accum_iter(config)
    step_batch = per_step_batch(train_cfg, env.world_size, accum)
    device = resolve_device(config, env.local_rank)
    workers = runtime.get("num_workers", 0)
    loader_args = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False)
    train_set = SeededSamples(train_set, config["seed"])
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=config["seed"], drop_last=True)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=step_batch, sampler=sampler, drop_last=True,
                                               **loader_args)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=step_batch, sampler=ShardSampler(len(val_set), env),
                                             drop_last=False, **loader_args)
    model = build_model(config, len(classes)).to(device)
    speed_options(model.backbone, config, device)
    train_model = model
    if env.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, train_cfg)
    updates_per_epoch = len(train_loader) // accum
    scheduler = build_scheduler(optimizer, train_cfg, updates_per_epoch)
    mixup = build_mixup(train_cfg, len(classes))
    return {"model": model, "train_model": train_model, "optimizer": optimizer, "scheduler": scheduler,
            "train_loader": train_loader, "val_loader": val_loader, "mixup": mixup,
            "criterion": build_criterion(train_cfg, mixup), "classes": classes, "device": device,
            "updates_per_epoch": updates_per_epoch, "env": env, "accum": accum, "train_listing": listing,
            "kept": kept}


# --- train / evaluate ---------------------------------------------------------------------------------
def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed every RNG that touches an epoch (sampler, RandAugment, erasing, mixup, drop path) from (seed, epoch)."""
    s = (seed * 1_000_003 + epoch) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(parts: dict, config: dict, epoch: int, run=None) -> float:
    """One epoch of fine-tuning; returns the mean training loss (against the mixed soft targets)."""
    model, opt, sched, mixup, criterion = (parts[k] for k in ("train_model", "optimizer", "scheduler", "mixup", "criterion"))
    train_cfg, device, env = config["train"], parts["device"], parts.get("env") or D.DistEnv()
    accum, per_epoch = parts.get("accum", train_cfg.get("accum_iter", 1)), parts["updates_per_epoch"]
    log_every = config.get("_runtime", {}).get("log_every", 50)
    model.train()
    total, count = 0.0, 0
    loader = parts["train_loader"]
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    bar = tqdm(loader, desc=f"in1k epoch {epoch + 1}/{train_cfg['epochs']}", unit="batch", leave=False,
               disable=not env.is_main)
    opt.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(bar):
        if i // accum >= per_epoch:
            break  # a trailing partial accumulation would be a step with fewer samples
        update = epoch * per_epoch + i // accum
        if i % accum == 0:
            sched.step_update(update)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        # gradients are all-reduced on the last micro-step of an update only
        sync = (i + 1) % accum == 0 or not env.distributed
        with _autocast(device, train_cfg["amp"]), (contextlib.nullcontext() if sync else model.no_sync()):
            loss = criterion(model(images), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"in1k: loss is {loss.item()} at epoch {epoch}, step {i}; lower train.lr/blr")
            (loss / accum).backward()
        if (i + 1) % accum == 0:
            if train_cfg.get("clip_grad"):
                nn.utils.clip_grad_norm_(model.parameters(), train_cfg["clip_grad"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            lr = max(g["lr"] for g in opt.param_groups)
            if run is not None and (update % log_every == 0 or update == per_epoch * (epoch + 1) - 1):
                run.log(step=update + 1, epoch=epoch, loss=loss.item(), lr=lr)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        total += loss.item() * images.shape[0]
        count += images.shape[0]
    total, count = D.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64), env).tolist()
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool = True, env: D.DistEnv | None = None,
             hits: torch.Tensor | None = None) -> dict:
    """top1/top5 (percent) and mean cross-entropy over the validation set (top-5 is top-k with k = min(5, classes));
    each rank evaluates its shard and the counts are summed over ranks. ``hits`` (zeros, one per val image) receives
    each image's top-1 hit, summed over ranks: the per-sample results."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    env = env or D.DistEnv()
    order = iter(loader.sampler) if hits is not None else None
    for images, targets in tqdm(loader, desc="in1k eval", unit="batch", leave=False, disable=not env.is_main):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        if hits is not None:
            hits[[next(order) for _ in range(len(targets))]] = hit[:, 0].double().cpu()
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(dim=1).sum().item()
        n += targets.numel()
    correct1, correct5, loss_sum, n = D.all_reduce_sum(
        torch.tensor([correct1, correct5, loss_sum, n], dtype=torch.float64), env).tolist()
    if hits is not None:
        hits.copy_(D.all_reduce_sum(hits, env))
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "val_loss": loss_sum / n}


# --- checkpoint ---------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model: nn.Module, optimizer, epoch: int, metrics: dict, trained_only: bool = False) -> None:
    """Atomically write the state after ``epoch`` (0-based, completed); only tensors/numbers/strings (weights_only-safe).
    ``trained_only`` (a frozen encoder: ``protocol=lora``) keeps the trained parameters, not the encoder's weights."""
    from transfer.lora import trainable_state

    weights = trainable_state(model) if trained_only else model.state_dict()
    state = {"epoch": epoch, "model": weights, "optimizer": optimizer.state_dict(),
             "metrics": {k: float(v) for k, v in metrics.items()}}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, model: nn.Module, optimizer) -> dict:
    """Restore model and optimizer in place; returns the checkpoint's epoch and metrics."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trained & set(missing):
        raise RuntimeError(f"{path}: does not match the model (unexpected {unexpected[:3]}, missing trained "
                           f"{sorted(trained & set(missing))[:3]}); move it away to start over")
    optimizer.load_state_dict(state["optimizer"])
    return {"epoch": state["epoch"], "metrics": state.get("metrics", {})}


def run_probe(config: dict, run) -> dict:
    """``protocol=linear | knn``: the frozen-feature probes of :mod:`transfer.probe` (no fine-tuning)."""
    from transfer import probe

    root = Path(config["data_root"]) / "in1k"
    build_datasets(config)  # the layout and class checks, with their messages
    classes = class_names(root)
    _, eval_tf = build_transforms(config["train"], config["data"])
    datasets = {"train": ClassFolder(root / "train", classes, eval_tf), "val": ClassFolder(root / "val", classes, eval_tf)}
    return probe.run(config, run, datasets, classes, resolve_device(config))


def run(config: dict, run) -> dict:
    """Fine-tune (``protocol=finetune``, or ``lora``: adapters only) and evaluate, resuming from
    ``<run>/checkpoint.pt``; or probe frozen features (``linear``, ``knn``). Returns top1, top5 (percent), ..."""
    protocol = config["transfer"].get("protocol", "finetune")
    if protocol in ("linear", "knn"):
        return run_probe(config, run)
    parts = build(config)
    if parts["env"].is_main:
        from transfer.probe import write_samples

        write_samples(run, parts["train_listing"], parts["kept"])
    train_cfg, env = config["train"], parts["env"]
    epochs = train_cfg["epochs"]
    if parts["updates_per_epoch"] == 0:
        raise ConfigError(f"in1k: {len(parts['train_loader'].dataset)} training images are fewer than one optimizer step "
                         f"(train.batch_size={train_cfg['batch_size']}); lower train.batch_size")
    ckpt = Path(run.path) / CHECKPOINT
    start, metrics = 0, {}
    if ckpt.exists():
        state = load_checkpoint(ckpt, parts["model"], parts["optimizer"])
        start, metrics = state["epoch"] + 1, state["metrics"]
        run.log(event="resume", epoch=start, checkpoint=str(ckpt))
    else:
        run.log(event="start", epochs=epochs, train_images=len(parts["train_loader"].dataset),
                val_images=len(parts["val_loader"].dataset), classes=len(parts["classes"]), device=str(parts["device"]))
    t0 = time.perf_counter()
    hits, scored = torch.zeros(len(parts["val_loader"].dataset), dtype=torch.float64), False
    for epoch in range(start, epochs):
        seed_epoch(config["seed"], epoch)
        train_loss = train_one_epoch(parts, config, epoch, run)
        metrics = {"train_loss": train_loss}
        last = epoch + 1 == epochs
        if (epoch + 1) % train_cfg["eval_every"] == 0 or last:
            metrics.update(evaluate(parts["model"], parts["val_loader"], parts["device"], train_cfg["amp"], env,
                                    hits=hits if last else None))
            scored = scored or last
        run.log(epoch=epoch, **metrics)
        if env.is_main:
            save_checkpoint(ckpt, parts["model"], parts["optimizer"], epoch, metrics, trained_only=protocol == "lora")
        D.barrier(env)  # no rank starts the next epoch before the checkpoint it could resume from is written
    if not scored:  # resumed after the last epoch's checkpoint but before DONE: evaluate what was saved
        metrics.update(evaluate(parts["model"], parts["val_loader"], parts["device"], train_cfg["amp"], env, hits=hits))
    if env.is_main:
        from fourm.per_sample import write_per_sample

        metrics.update(write_per_sample(run.path, {"correct": hits.numpy()},
                                        {"top1": {"kind": "mean", "values": "correct", "scale": 100.0}}))
        if protocol == "lora":
            from transfer.lora import save_adapter

            save_adapter(parts["model"], run.path, {"init": config["transfer"]["init"], **config["lora"]})
    metrics.update({"epochs": epochs, "train_time_s": time.perf_counter() - t0, "ranks": env.world_size,
                    "train_images": len(parts["train_loader"].dataset), "val_images": len(parts["val_loader"].dataset)})
    return metrics
