"""The 4M pretraining loop: `fourm-bench pretrain <hydra overrides>`.

Deterministic by construction: every step draws its batch, masks, dropout and decoder order from seeds derived
from (seed, step, micro-step), so a run resumed from a checkpoint continues bit-exactly on CPU.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fourm import runs
from fourm.models import FourM, config_for
from fourm import distributed as D
from fourm.pretrain.checkpoints import latest_checkpoint, load_state, read_data_state, save_state
from fourm.pretrain.seeds import step_seed
from fourm.pretrain.schedule import lr_at, scaled_lr


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/inf; the last good checkpoint is kept."""


def gather_data_state(data, env) -> dict | None:
    """The reader's position on every rank, merged (each stream is read by the ranks whose rows it fills)."""
    if not hasattr(data, "state_dict"):
        return None
    mine = data.state_dict()
    if not env.distributed:
        return mine
    states = [None] * env.world_size
    torch.distributed.all_gather_object(states, mine)
    merged = dict(states[0])
    merged["positions"] = {k: v for st in states for k, v in st["positions"].items()}
    merged["skipped"] = sum(int(st.get("skipped", 0)) for st in states)
    return merged


def build_model(cfg: dict) -> FourM:
    """The model of a pretraining config; ``model.vocab_sizes=data`` sizes its token tables from the data's tokenizers."""
    m = dict(cfg["model"])
    name = m.pop("name")
    if m.get("vocab_sizes") == "data":
        from fourm.pretrain.data import data_vocab_sizes

        m["vocab_sizes"] = data_vocab_sizes(cfg)
    elif isinstance(m.get("vocab_sizes"), str):
        raise ValueError(f"model.vocab_sizes={m['vocab_sizes']!r}: use 'data', null (the official vocabularies) or a mapping")
    return FourM.from_config(config_for(name, **m))


def param_groups(model: FourM, weight_decay: float) -> list[dict]:
    skip = model.weight_decay_exclusions()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in skip]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n in skip]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def tokens_per_step(cfg: dict) -> int:
    return cfg["batch_size"] * (cfg["budget"]["num_input_tokens"] + cfg["budget"]["num_target_tokens"])


def total_steps(cfg: dict) -> int:
    return max(1, math.ceil(cfg["schedule"]["total_tokens"] / tokens_per_step(cfg)))


def _autocast(cfg: dict, device: torch.device):
    precision = cfg.get("precision", "auto")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def activation_checkpointing(cfg: dict, device: torch.device) -> bool:
    """``distributed.activation_checkpointing``: true/false, or auto (on for large and xlarge models on GPU)."""
    from fourm.models.factory import checkpoint_by_default

    value = cfg["distributed"].get("activation_checkpointing", "auto")
    return checkpoint_by_default(cfg["model"]["name"], device) if value == "auto" else bool(value)


def compile_blocks(model: FourM) -> None:
    """``torch.compile`` every encoder and decoder block with ``fullgraph=True``: a graph break is an error that
    names it (at the first step), not a silent fall back to eager. The embeddings and masking stay eager: they
    branch on the batch's modalities."""
    for blk in [*model.encoder, *model.decoder]:
        blk.compile(fullgraph=True, dynamic=False)


def wrap(model: FourM, cfg: dict, env: D.DistEnv, device: torch.device):
    """The module to train: the model alone, DDP, or FSDP (``distributed.fsdp_sharding``: ``full_shard`` reshards
    parameters after forward, ``shard_grad_op`` keeps them gathered until backward), each block its own FSDP unit,
    in bf16 parameters and gradient reduction on GPU unless ``precision=fp32``; the rest of the model is replicated."""
    if not env.distributed:
        return model
    dcfg = cfg["distributed"]
    if dcfg["strategy"] == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        sharding = dcfg.get("fsdp_sharding", "full_shard")
        if sharding not in ("full_shard", "shard_grad_op"):
            raise ValueError(f"distributed.fsdp_sharding={sharding!r}: use full_shard or shard_grad_op")
        mp = MixedPrecisionPolicy()
        if device.type == "cuda" and cfg.get("precision", "auto") != "fp32":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
        kw = dict(reshard_after_forward=sharding == "full_shard", mp_policy=mp)
        # the blocks hold the parameters that grow with size; the embeddings stay replicated, as a modality absent
        # from one rank's batch leaves its embedding without a gradient there (see sync_replicated_grads)
        for blk in [*model.encoder, *model.decoder]:
            fully_shard(blk, **kw)
        return model
    if dcfg["strategy"] != "ddp":
        raise ValueError(f"distributed.strategy={dcfg['strategy']!r}: use ddp or fsdp")
    # unused: modalities absent from a batch, and the decoder token tables of image targets (official layout)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[env.local_rank] if device.type == "cuda" else None, find_unused_parameters=True)


def sync_replicated_grads(model: FourM, env: D.DistEnv) -> None:
    """FSDP shards the blocks; the rest (the embeddings of each modality, norms, mask tokens) is replicated, and its
    gradients are averaged over ranks here, a missing one (a modality absent from a rank's batch) counting as 0."""
    from torch.distributed.tensor import DTensor

    replicated = [p for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    for p in replicated:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in replicated])
    torch.distributed.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p in replicated:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def clip_grad_norm(model: FourM, max_norm: float, env: D.DistEnv, fsdp: bool) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over the whole model; with FSDP the blocks' gradients are shards (summed over
    ranks for the norm) and the rest replicated."""
    if not fsdp:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    replicated = [g for g in grads if not isinstance(g, DTensor)]
    sq_sharded = sum((g.float().pow(2).sum() for g in sharded), torch.zeros(()))
    torch.distributed.all_reduce(sq_sharded)
    total = (sq_sharded + sum((g.float().pow(2).sum() for g in replicated), torch.zeros(()))).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in [*sharded, *replicated]:
        g.mul_(coef.to(g.dtype))
    return total


def full_state(model: FourM, opt) -> dict:
    """FSDP: the full model and optimizer state on rank 0 (the optimizer's keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"model_state": get_model_state_dict(model, options=options),
            "opt_state": get_optimizer_state_dict(model, opt, options=options)}


def load_optimizer_state(model: FourM, opt, state: dict, fsdp: bool, path) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if state["optimizer_format"] != "by_name":
            raise ValueError(f"{path}/state.pt holds the optimizer by index (a DDP run): resume it with "
                             "distributed.strategy=ddp")
        set_optimizer_state_dict(model, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    elif state["optimizer_format"] != "by_index":
        raise ValueError(f"{path}/state.pt holds the optimizer by parameter name (an FSDP run): resume it with "
                         "distributed.strategy=fsdp")
    else:
        opt.load_state_dict(state["optimizer"])


def _to(mod_dict: dict, device) -> dict:
    return {m: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in d.items()} for m, d in mod_dict.items()}


@torch.no_grad()
def validate(model, data, cfg, device, env) -> dict[str, float]:
    """Mean loss per modality over fixed validation batches (fixed masks: seeds depend only on the batch index)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = cfg["val"]["batches"]
    for i in range(n):
        mod_dict = data.val_batch(i, step_seed(cfg["seed"], i, stream=7))
        with _autocast(cfg, device):
            loss, mod_loss = model(_to(mod_dict, device), cfg["budget"]["num_input_tokens"],
                                   cfg["budget"]["num_target_tokens"], loss_type=cfg["loss_type"],
                                   rng=random.Random(step_seed(cfg["seed"], i, stream=8)), count_reduce=D.count_reducer(env))
        for k, v in {"loss": loss, **mod_loss}.items():
            sums[k] = sums.get(k, 0.0) + float(D.all_reduce_mean(v.detach().float().reshape(()), env))
    model.train(was_training)
    return {f"val/{k}": v / n for k, v in sums.items()}


def train(cfg: dict, run: runs.Run, *, stop_after: int | None = None, progress: bool = True, data=None) -> dict:
    """Train until the token budget is spent (or ``stop_after`` steps); returns the final metrics.

    ``data`` replaces the streaming reader of ``data.train`` (:class:`~fourm.pretrain.stream.StreamingData`), e.g.
    with in-memory samples (:class:`~fourm.pretrain.data.PretrainData`).
    """
    from fourm.pretrain.stream import StreamingData

    own_group = not torch.distributed.is_initialized()  # a caller's process group outlives this call
    env = D.setup()
    device = torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg).to(device)
    n_steps = total_steps(cfg)
    lr = scaled_lr(cfg["optim"]["blr"], cfg["batch_size"])
    fsdp = env.distributed and cfg["distributed"]["strategy"] == "fsdp"
    model.checkpoint_blocks = activation_checkpointing(cfg, device)

    start_step, tokens_seen = 0, 0
    ckpt_dir = run.path / "checkpoints"
    latest = latest_checkpoint(ckpt_dir) if cfg.get("_resume", "auto") == "auto" else None
    state = None
    if latest is not None:  # the weights now; the optimizer once it exists over the (possibly sharded) parameters
        state = load_state(latest, model, None)
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        if env.is_main:
            run.log(event="resume", step=start_step, checkpoint=str(latest))
    elif cfg.get("init"):  # a fresh run starting from another model's weights (4M-21 from 4M-7)
        from fourm.models.checkpoint import init_from

        report = init_from(model, cfg["init"])
        if env.is_main:
            run.log(event="init", checkpoint=str(cfg["init"]), copied=report["copied"], of=report["of"],
                    new=report["new"], other_shape=report["other_shape"], unused=len(report["unused"]))
    if cfg.get("compile"):
        compile_blocks(model)
    train_model = wrap(model, cfg, env, device)
    # fused: one kernel per step instead of a Python loop over tensors; the pretraining step on one CPU thread is
    # ~15% faster (a small model's step is mostly per-tensor overhead), with the same losses. FSDP's sharded
    # parameters take the per-tensor path.
    opt = torch.optim.AdamW(param_groups(model, cfg["optim"]["weight_decay"]), lr=lr, betas=tuple(cfg["optim"]["betas"]),
                            fused=not fsdp)
    if state is not None:
        load_optimizer_state(model, opt, state, fsdp, latest)

    if data is None:
        vocab = {m: info.vocab_size for m, info in model.modality_info.items() if info.kind == "image_tokens"}
        data = StreamingData(cfg, env, vocab)
    if latest is not None and hasattr(data, "load_state_dict"):
        reader = read_data_state(latest)
        if reader is not None:
            data.load_state_dict(reader)
    n_in, n_tg = cfg["budget"]["num_input_tokens"], cfg["budget"]["num_target_tokens"]
    accum = cfg["accum_steps"]
    last = n_steps if stop_after is None else min(n_steps, stop_after)
    bar = tqdm(range(start_step, last), initial=start_step, total=last, desc="pretrain", disable=not (progress and env.is_main))
    metrics: dict = {}
    t0 = time.perf_counter()
    # torch.manual_seed also queues a lazy CUDA seed (with a captured traceback) when CUDA is not initialised:
    # 0.6% of a CPU step; on the CPU only the CPU generator matters
    seed_torch = torch.manual_seed if device.type != "cpu" else torch.default_generator.manual_seed
    for step in bar:
        cur_lr = lr_at(tokens_seen, lr, cfg["schedule"]["warmup_tokens"], cfg["schedule"]["total_tokens"], cfg["optim"]["min_lr"])
        for g in opt.param_groups:
            g["lr"] = cur_lr
        opt.zero_grad(set_to_none=True)
        step_loss, step_mod = 0.0, {}
        for micro in range(accum):
            seed_torch(step_seed(cfg["seed"], step, micro, stream=1 + env.rank))
            mod_dict = _to(data.train_batch(step, micro, step_seed(cfg["seed"], step, micro, stream=2)), device)
            last_micro = micro == accum - 1 or not env.distributed
            if fsdp:
                for blk in [*model.encoder, *model.decoder]:  # reduce-scatter on the update's last micro-step
                    blk.set_requires_gradient_sync(last_micro)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last_micro else train_model.no_sync()
            with sync, _autocast(cfg, device):
                loss, mod_loss = train_model(mod_dict, n_in, n_tg, loss_type=cfg["loss_type"],
                                             rng=random.Random(step_seed(cfg["seed"], step, micro, stream=3)),
                                             count_reduce=D.count_reducer(env))
                (loss / accum).backward()
            step_loss += float(D.all_reduce_mean(loss.detach().float(), env)) / accum
            for k, v in mod_loss.items():
                step_mod[k] = step_mod.get(k, 0.0) + float(D.all_reduce_mean(v.detach().float(), env)) / accum
        if fsdp:
            sync_replicated_grads(model, env)
        grad_norm = clip_grad_norm(model, cfg["optim"]["clip_grad"] or float("inf"), env, fsdp)
        loss_t = torch.tensor(step_loss)
        if not (math.isfinite(float(loss_t)) and math.isfinite(float(grad_norm))):
            good = latest_checkpoint(ckpt_dir)
            if env.is_main:
                run.log(event="diverged", step=step, loss=float(loss_t), grad_norm=float(grad_norm))
            raise TrainingDiverged(
                f"step {step}: loss {float(loss_t)} / grad norm {float(grad_norm)} is not finite; nothing was saved for this step. "
                f"Last good checkpoint: {good or 'none'} (_resume=auto continues from it); lower optim.blr or raise warmup."
            )
        opt.step()
        tokens_seen += tokens_per_step(cfg)
        done_step = step + 1
        if env.is_main:
            rec = {"step": done_step, "tokens": tokens_seen, "lr": cur_lr, "loss": float(loss_t), "grad_norm": float(grad_norm),
                   **{f"loss/{k}": v for k, v in step_mod.items()}}
            run.log(**rec)
            bar.set_postfix(loss=f"{float(loss_t):.3f}", lr=f"{cur_lr:.2e}")
        if done_step % cfg["val"]["every_steps"] == 0 or done_step == n_steps:
            val = validate(model, data, cfg, device, env)
            if env.is_main:
                run.log(step=done_step, **val)
            metrics.update(val)
        if done_step % cfg["checkpoint"]["every_steps"] == 0 or done_step in (last, n_steps):
            full = full_state(model, opt) if fsdp else {}  # collective: every rank takes part
            reader = gather_data_state(data, env)  # collective too: each rank holds its own streams' positions
            if env.is_main:
                save_state(ckpt_dir, model, opt, step=done_step, tokens_seen=tokens_seen, keep=cfg["checkpoint"]["keep"],
                           data_state=reader, **full)
            if env.distributed:
                torch.distributed.barrier()
    elapsed = time.perf_counter() - t0
    final_step = last
    metrics.update({"step": final_step, "tokens_seen": tokens_seen, "train/loss": step_loss if last > start_step else None,
                    **{f"train/{k}": v for k, v in step_mod.items()}, "seconds": elapsed,
                    "tokens_per_second": tokens_per_step(cfg) * (final_step - start_step) / max(elapsed, 1e-9)})
    if hasattr(data, "close"):
        data.close()
    if own_group:
        D.shutdown(env)
    else:
        D.barrier(env)
    return metrics


# user-facing names of the keys that are not identity (fourm.runs.identity): `runs_root=...` sets `_runs_root`
ALIASES = {"runs_root": "_runs_root", "resume": "_resume", "tracker": "_tracker"}
CONFIG_DIR = Path(__file__).parent / "configs"


def _alias(override: str) -> list[str]:
    """``runs_root=``/``resume=`` set their ``_`` keys; ``model=<factory name>`` picks its size's group and that name
    (``model=`` is an architecture in every command: a size or a factory name)."""
    key, sep, value = override.partition("=")
    prefix = "+" if key.startswith("+") else ""
    key = key.removeprefix("+")
    if key == "model" and sep and not prefix and not (CONFIG_DIR / "model" / f"{value}.yaml").exists():
        from fourm.models.factory import model_name

        try:
            name = model_name(value)
        except ValueError as e:
            from fourm.configs import ComposeError

            raise ComposeError(f"{e}; the model groups are {sorted(p.stem for p in (CONFIG_DIR / 'model').glob('*.yaml'))}") from None
        size = name.split("_")[1]
        if (CONFIG_DIR / "model" / f"{size}.yaml").exists():
            return [f"model={size}", f"model.name={name}"]
    return [f"{prefix}{ALIASES.get(key, key)}{sep}{value}"]


def apply_size_recipe(cfg: dict, explicit=()) -> dict:
    """Set the optimizer values of the model's size (``optim.size_recipes``: the official ones for the released
    sizes) unless ``explicit`` names the key; the recipe table itself leaves the config."""
    recipes = (cfg.get("optim") or {}).pop("size_recipes", None) or {}
    parts = str(cfg.get("model", {}).get("name", "")).split("_")
    size = parts[1] if len(parts) > 1 else None
    explicit = {k.lstrip("+") for k in explicit}
    for key, value in (recipes.get(size) or {}).items():
        if f"optim.{key}" not in explicit:
            cfg["optim"][key] = value
    return cfg


def resolve(overrides: list[str]) -> dict:
    """Compose the hydra config (fourm/pretrain/configs) with overrides into a plain dict."""
    from omegaconf import OmegaConf

    from fourm.configs import compose

    expanded = [o for override in overrides for o in _alias(override)]
    cfg = OmegaConf.to_container(compose(CONFIG_DIR, "config", expanded), resolve=True)
    from fourm.pretrain import official_data

    from fourm.tracking import tracker_kind

    cfg = official_data.apply(cfg)
    tracker_kind(cfg)  # an unknown _tracker is a config error now, not at the first logged step
    return finish_config(cfg, [o.split("=", 1)[0] for o in expanded])


def finish_config(cfg: dict, explicit=()) -> dict:
    """The last steps of resolving a composed pretraining config (shared with the grid resolver): the size's
    optimizer recipe; without a starting checkpoint the ``init`` key leaves (a run's identity names only what it has)."""
    if cfg.get("init") is None:
        cfg.pop("init", None)
    return apply_size_recipe(cfg, explicit)


def run_from_config(cfg: dict, run_dir: str | None = None, **kwargs) -> dict:
    """Open (or reopen) the run folder of ``cfg``, train, write metrics and DONE. Skips a DONE run."""
    run = runs.Run(run_dir) if run_dir else runs.open_run(cfg["_runs_root"], cfg)
    if run_dir:
        run.path.mkdir(parents=True, exist_ok=True)
        if not (run.path / "config.yaml").exists():
            runs.write_config(run.path, cfg)
        if not (run.path / "env.json").exists():
            run.write_env()
        elif not run.done:
            run.log(event="reopen", env=runs.environment())
    if run.done:
        return run.metrics
    metrics = train(cfg, run, **kwargs)
    if kwargs.get("stop_after") is None and D.detect().is_main:
        final = latest_checkpoint(run.path / "checkpoints")
        metrics["checkpoint"] = str(final / "model.safetensors") if final else None
        run.write_metrics(metrics)
        run.mark_done()
    return metrics


def cli(argv: list[str]) -> int:
    """``fourm-bench pretrain key=value ... [--print-config]`` (hydra overrides of fourm/pretrain/configs)."""
    import sys

    import yaml

    from fourm.configs import ComposeError

    if any(a in ("-h", "--help") for a in argv):
        groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
        print("usage: fourm-bench pretrain [key=value ...] [--print-config]\n"
              "  e.g. model=micro budget=paper optim.blr=1e-4 batch_size=16 data.train=shards/train\n"
              "  init=<4M checkpoint.safetensors> starts from its weights (same size; 4M-21 from 4M-7), "
              "data.official_config=<official data yaml> reads an official data config\n"
              "  runs_root=<dir> (default runs/pretrain) and resume=auto|never are not part of the run's identity\n"
              f"config groups in {CONFIG_DIR} (group=<option>): " + "; ".join(
                  f"{g}: {', '.join(sorted(f.stem for f in (CONFIG_DIR / g).glob('*.yaml')))}" for g in groups))
        return 0
    print_config = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    from fourm.pretrain.data import text_tokenizer
    from fourm.pretrain.stream import dataset_readers, has_own_settings, reader_settings, train_sources
    from fourm.tokenizers.layout import DataError, parse

    try:
        cfg = resolve(argv)
        if not print_config:  # the data exists before anything starts (one line naming what is missing)
            if cfg.get("init"):  # the starting checkpoint is readable and of this run's size
                from fourm.models.checkpoint import CheckpointError, check_init

                try:
                    check_init(cfg["init"], config_for(cfg["model"]["name"]))
                except CheckpointError as e:
                    raise ValueError(str(e)) from None
            reader_settings(cfg)
            train_sources(cfg["data"])
            if any(has_own_settings(d) for d in (cfg["data"].get("mix") or {}).values()):
                mods = list(dict.fromkeys([*cfg["model"]["domains_in"], *cfg["model"]["domains_out"]]))
                tok, bins = text_tokenizer(cfg, mods)
                dataset_readers(cfg, mods, tok, None, bins)  # each dataset's domains and alphas
            if cfg["data"].get("val"):
                parse(cfg["data"]["val"])
    except (ComposeError, ValueError, DataError) as e:
        print(f"fourm-bench pretrain: {e}", file=sys.stderr)
        return 2
    if print_config:
        print(f"# run id {runs.run_id(cfg)}")
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    try:
        metrics = run_from_config(cfg)
    except DataError as e:
        print(f"fourm-bench pretrain: {e}", file=sys.stderr)
        return 1
    print({k: v for k, v in metrics.items() if k.startswith("val/") or k in ("step", "tokens_seen", "checkpoint")})
    return 0
