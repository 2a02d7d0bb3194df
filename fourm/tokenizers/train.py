"""Train one VQ-VAE tokenizer on one modality folder of a 4M-layout dataset.

The run folder (``<out>/<run id>``, :mod:`fourm.runs`) holds ``config.yaml``, ``log.jsonl`` (step losses, one
``epoch`` record with validation metrics per epoch), ``checkpoints/step_*.{safetensors,state.pt}``, and once finished
``tokenizer.safetensors``, ``metrics.json`` and ``DONE``. Training is deterministic given the config: the epoch
permutation and flips are drawn from generators seeded by (seed, epoch/step) and the global torch RNG (model init,
dead-code restarts) is saved in every checkpoint, so a resumed run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from tqdm import tqdm

from fourm.configs import compose
from fourm.modalities import get as token_modality
from fourm.modalities import has_spec, spec
from fourm.modalities.metrics import ReconstructionMeter, constant_prediction, fit_constant
from fourm.runs import Run, open_run, run_id
from fourm.threads import torch_threads
from fourm.tokenizers.checkpoint import (
    checkpoint_paths,
    latest_step,
    list_steps,
    load_training_checkpoint,
    save_tokenizer,
    save_training_checkpoint,
)
from fourm.tokenizers.modality_io import list_stems, load_modality, split_root
from fourm.tokenizers.quantizer import codebook_perplexity
from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _spec_overrides(name: str, overrides: list[str]) -> list[str]:
    """A registered modality needs no YAML of its own: ``modality=<spec>`` (no group file) becomes the ``spec`` group
    with the spec's names, and ``tokenizers.<spec>=<run>`` of encode adds the key the YAML does not list."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if name in ("train", "eval") and key == "modality" and sep and not (CONFIG_DIR / "modality" / f"{value}.yaml").exists() \
                and has_spec(value) and spec(value).token:
            s = spec(value)
            out += ["modality=spec", f"modality.name={s.name}", f"modality.token_modality={s.token}",
                    f"modality.official_vocab_size={token_modality(s.token).vocab_size}"]
        elif name == "encode" and key.startswith("tokenizers.") and sep and key.count(".") == 1:
            listed = yaml.safe_load((CONFIG_DIR / "encode.yaml").read_text())["tokenizers"]
            out.append(o if key.split(".", 1)[1] in listed else f"+{o}")
        else:
            out.append(o)
    return out


def compose_config(name: str, overrides: list[str]) -> dict:
    """Compose ``configs/<name>.yaml`` with hydra overrides (``key=value``, ``group=option``) into a plain dict.

    Values with braceexpand patterns are quoted for hydra, so ``shards=x-{000000..000003}.tar`` works unquoted.
    """
    cfg = compose(CONFIG_DIR, name, _spec_overrides(name, overrides))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"{CONFIG_DIR / (name + '.yaml')}: required keys {missing} are not set; pass them as key=value")
    out = OmegaConf.to_container(cfg, resolve=True)
    if name == "train" and out.get("arch", "conv") == "conv":
        out.pop("official", None)  # the official architectures' settings: not this run's (nor part of its identity)
    return out


def model_config(cfg: dict) -> VQVAEConfig:
    """The tokenizer's :class:`VQVAEConfig` from a composed train config (``model`` + ``modality`` groups)."""
    fields = {f.name for f in dataclasses.fields(VQVAEConfig)}
    mod = cfg["modality"]
    d = {k: v for k, v in cfg["model"].items() if k in fields}
    d.update({k: v for k, v in mod.items() if k in fields})
    d["modality"] = mod["name"]
    try:
        return VQVAEConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tokenizer config (model={cfg['model']}, modality={mod}): {e}") from None


def lr_at(step: int, total: int, cfg: dict) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio``."""
    lr, warm = cfg["lr"], cfg["warmup_steps"]
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    floor = lr * cfg["min_lr_ratio"]
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def load_splits(cfg: dict, mcfg: VQVAEConfig, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation tensors of the modality at the tokenizer's image size (held in memory)."""
    mod = mcfg.modality
    train_root = split_root(cfg["data"], cfg["split"])
    stems = list_stems(train_root, [mod])
    val_root = Path(cfg["data"]) / cfg["val_split"] if cfg.get("val_split") else None
    if val_root is not None and (val_root / mod).is_dir():
        val_stems = list_stems(val_root, [mod])
    else:
        n_val = max(1, int(round(len(stems) * cfg["val_fraction"])))
        if len(stems) - n_val < 1:
            raise ValueError(f"{train_root}: {len(stems)} samples are too few to hold out {n_val} for validation")
        val_root, val_stems, stems = train_root, stems[-n_val:], stems[:-n_val]
    if cfg.get("max_train_samples"):
        stems = stems[: cfg["max_train_samples"]]
    if cfg.get("max_val_samples"):
        val_stems = val_stems[: cfg["max_val_samples"]]
    train_x = load_modality(train_root, mod, mcfg.image_size, stems, desc=f"load train {mod}", progress=progress)
    val_x = load_modality(val_root, mod, mcfg.image_size, val_stems, desc=f"load val {mod}", progress=progress)
    return train_x, val_x


@torch.no_grad()
def evaluate(model: VQVAE, val_x: torch.Tensor, batch_size: int = 32) -> dict:
    """Validation reconstruction metrics (through the tokens) and token statistics."""
    c = model.config
    was_training = model.training
    model.eval()
    meter = ReconstructionMeter(spec(c.modality).metric, c.num_classes, c.ignore_index)
    tokens = []
    for i in range(0, len(val_x), batch_size):
        x = val_x[i : i + batch_size]
        t = model.encode(x)
        tokens.append(t)
        meter.update(model.decode(t), x)
    model.train(was_training)
    tokens = torch.cat(tokens)
    return {
        **meter.compute(),
        "token_perplexity": codebook_perplexity(tokens, c.codebook_size),
        "codes_used": int(torch.unique(tokens).numel()),
    }


def baselines(mcfg: VQVAEConfig, train_x: torch.Tensor, val_x: torch.Tensor) -> dict:
    """Metrics of trivial predictors on the validation set (see :mod:`fourm.modalities.metrics`)."""
    kind = spec(mcfg.modality).metric
    const = fit_constant(kind, train_x, mcfg.num_classes, mcfg.ignore_index)
    meter = ReconstructionMeter(kind, mcfg.num_classes, mcfg.ignore_index)
    meter.update(constant_prediction(const, val_x), val_x)
    out = {"constant": meter.compute()}
    for name, predict in meter.oracles.items():
        oracle = ReconstructionMeter(kind, mcfg.num_classes, mcfg.ignore_index)
        oracle.update(predict(val_x), val_x)
        out[name] = oracle.compute()
    return out


def _prune(run: Run, folder: Path, keep: int) -> None:
    steps = list_steps(folder)
    old = steps[: max(len(steps) - keep, 0)] if keep > 0 else []
    for s in old:
        for p in checkpoint_paths(folder, s):
            p.unlink(missing_ok=True)
    if old:
        run.log(event="prune_checkpoints", removed_steps=old, kept=steps[len(old):])


def train(cfg: dict, progress: bool = True) -> Run:
    """Train (or resume, or skip if DONE) the tokenizer run of a composed config; returns its run."""
    with torch_threads(cfg.get("threads")):
        return _train(cfg, progress)


def _train(cfg: dict, progress: bool = True) -> Run:
    cfg = dict(cfg)
    out = cfg.pop("out")
    cfg["data"] = str(Path(cfg["data"]).resolve())
    if not Path(cfg["data"]).is_dir():
        raise FileNotFoundError(f"data={cfg['data']}: no such folder; pass a 4M-layout dataset (e.g. from `fourm-bench world`)")
    if cfg.get("arch", "conv") != "conv":  # an official architecture, written in the official format
        from fourm.tokenizers.train_official import train_official

        return train_official({**cfg, "out": out}, progress)
    mcfg = model_config(cfg)
    done = Run(Path(out) / run_id(cfg))
    if done.done:
        print(f"tokenizer run {done.path} is already DONE; nothing to do")
        return done

    train_x, val_x = load_splits(cfg, mcfg, progress)
    bs = cfg["batch_size"]
    steps_per_epoch = len(train_x) // bs
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={bs} is larger than the {len(train_x)} training samples; lower batch_size")
    total = cfg["epochs"] * steps_per_epoch
    run = open_run(out, cfg)  # only now: a bad config or dataset leaves no half-made run folder behind

    ckdir = run.path / "checkpoints"
    last = latest_step(ckdir)
    if last is None:
        torch.manual_seed(cfg["seed"])
        model = VQVAE(mcfg)
        state = {"step": 0, "train_seconds": 0.0}
        run.log(event="start", step=0, train_samples=len(train_x), val_samples=len(val_x), total_steps=total)
    else:
        model, state = load_training_checkpoint(ckdir, last)
        if model.config != mcfg:
            raise RuntimeError(f"{ckdir}: checkpoint config {model.config} differs from the run config {mcfg}")
        torch.set_rng_state(state["torch_rng"])
        run.log(event="resume", step=state["step"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if last is not None:
        opt.load_state_dict(state["optimizer"])
    step, train_seconds = int(state["step"]), float(state["train_seconds"])

    bar = tqdm(total=total, initial=step, desc=f"tokenizer {mcfg.modality}", unit="step", disable=not progress)
    t0 = time.perf_counter()
    every, evaluated_at = cfg.get("val_every_epochs", 1), None
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch))
        x = train_x[perm[i * bs : (i + 1) * bs]]
        if cfg["flip"] and mcfg.kind != "feature":  # a ViT's features of a flipped image are not its flipped features
            flips = torch.rand(bs, generator=torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)) < 0.5
            x = _flip(mcfg.modality, x, flips)
        if cfg.get("crop"):
            x = _random_crops(x, cfg["crop"], mcfg.downsample, cfg["seed"] * 10_000_019 + step)
        lr = lr_at(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        out_ = model(x)
        opt.zero_grad(set_to_none=True)
        out_["loss"].backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        step += 1
        bar.update()
        if step % cfg["log_every"] == 0 or step == total:
            rec = {k: float(torch.as_tensor(out_[k]).detach()) for k in ("loss", "recon_loss", "vq_loss", "perplexity", "usage")}
            run.log(step=step, epoch=epoch, lr=lr, **rec)
            bar.set_postfix(loss=f"{rec['recon_loss']:.4f}", usage=f"{rec['usage']:.2f}")
        if step % steps_per_epoch == 0:
            if every and ((epoch + 1) % every == 0 or step == total):
                final, evaluated_at = evaluate(model, val_x), step
                run.log(event="epoch", epoch=epoch + 1, step=step, **{f"val/{k}": v for k, v in final.items()})
            if (epoch + 1) % cfg["save_every_epochs"] == 0 or step == total:
                elapsed = train_seconds + time.perf_counter() - t0
                save_training_checkpoint(ckdir, model, opt, step, {"train_seconds": elapsed})
                _prune(run, ckdir, cfg["keep_checkpoints"])
    bar.close()
    train_seconds += time.perf_counter() - t0

    if evaluated_at != step:  # the last epoch's validation already measured these weights otherwise
        final = evaluate(model, val_x)
    metrics = {
        "modality": mcfg.modality,
        "token_modality": mcfg.token_modality,
        "vocab_size": mcfg.codebook_size,
        "grid": mcfg.grid,
        "image_size": mcfg.image_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": step,
        "train_samples": len(train_x),
        "val_samples": len(val_x),
        "train_seconds": round(train_seconds, 2),
        "val": final,
        "baselines": baselines(mcfg, train_x, val_x),
    }
    save_tokenizer(model, run.path / "tokenizer.safetensors")
    run.write_metrics(metrics)
    run.mark_done()
    return run


def _random_crops(x: torch.Tensor, size: int, align: int, seed: int) -> torch.Tensor:
    """One ``size`` px square crop per sample, at offsets on the token grid (multiples of ``align``)."""
    h, w = x.shape[-2:]
    if size % align or size > min(h, w):
        raise ValueError(f"crop={size}: must be a multiple of the downsampling factor {align} and at most {min(h, w)} px")
    g = torch.Generator().manual_seed(seed)
    oy = torch.randint(0, (h - size) // align + 1, (len(x),), generator=g) * align
    ox = torch.randint(0, (w - size) // align + 1, (len(x),), generator=g) * align
    return torch.stack([xi[..., y : y + size, x_ : x_ + size] for xi, y, x_ in zip(x, oy.tolist(), ox.tolist())])


def _flip(modality: str, x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    if not flips.any():
        return x
    x = x.clone()
    x[flips] = spec(modality).hflip(x[flips])
    return x


def cli(argv: list[str]) -> int:
    """``fourm-bench tokenize train key=value ...`` (hydra overrides of configs/train.yaml)."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(f"config: {CONFIG_DIR / 'train.yaml'}\n\n" + (CONFIG_DIR / "train.yaml").read_text())
        return 0
    show = "--print-config" in argv
    cfg = compose_config("train", [a for a in argv if a != "--print-config"])
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    run = train(cfg, progress=os.environ.get("FOURM_NO_PROGRESS") is None)
    m = run.metrics
    print(f"tokenizer: {run.path / 'tokenizer.safetensors'}")
    print(f"val: {m['val']}\nbaselines: {m['baselines']}")
    return 0
