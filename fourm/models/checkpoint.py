"""Official 4M checkpoints: safetensors whose ``__metadata__`` holds the model config (each value as ``str(value)``).

``load_pretrained`` builds a FourM from such a file (or a hub id) and loads every weight strictly;
``load_encoder`` builds the RGB (or multimodal) encoder view; ``save_checkpoint`` writes our models in the same format.
"""
from __future__ import annotations

import ast
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fourm.models.embeddings import resize_pos_emb
from fourm.models.encoder import FourMEncoder
from fourm.models.fourm import CONFIG_DEFAULTS, FourM


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and what to do."""


# Keys some releases store that describe training, not architecture: accepted and ignored.
_IGNORED_KEYS = {"num_register_tokens", "use_act_checkpoint", "modality_info", "model_type", "format"}


def parse_metadata(meta: dict[str, str]) -> dict:
    """Turn ``str(value)`` metadata back into Python values (lists, bools, numbers; other strings stay strings)."""
    out = {}
    for k, v in meta.items():
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def format_metadata(config: dict) -> dict[str, str]:
    return {k: str(v) for k, v in config.items()}


def _resolve(path: str | os.PathLike) -> Path:
    """A local file, or a hub id fetched through huggingface_hub (fails clearly when offline)."""
    p = Path(path)
    if p.exists():
        return p
    s = str(path)
    if s.count("/") == 1 and not s.startswith((".", "/")) and not s.endswith(".safetensors"):
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(s, "model.safetensors"))
        except Exception as e:  # offline, unknown repo, gated...
            raise CheckpointError(
                f"could not fetch {s!r} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                "Without network access, download model.safetensors elsewhere and pass its local path."
            ) from None
    raise CheckpointError(f"checkpoint {s!r} does not exist; pass the path of a .safetensors file or a hub id like EPFL-VILAB/4M-7_B_CC12M")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, parsed config) of an official-format file, with clear errors for foreign or corrupt files."""
    p = _resolve(path)
    try:
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e}); re-download or re-save it") from None
    config = parse_metadata(meta)
    if "dim" not in config or "domains_in" not in config:
        raise CheckpointError(
            f"{p}: safetensors metadata holds no 4M config (keys found: {sorted(config) or 'none'}); "
            "official 4M checkpoints store dim, domains_in, domains_out, ... in __metadata__"
        )
    return state, config


def _model_config(config: dict, path) -> dict:
    """The architecture keys of the metadata; keys of other tools (ours are prefixed x_) are ignored with a warning."""
    cfg = {k: v for k, v in config.items() if k in CONFIG_DEFAULTS}
    unknown = sorted(k for k in set(config) - set(cfg) - _IGNORED_KEYS if not k.startswith("x_"))
    if unknown:
        warnings.warn(f"{path}: ignoring metadata keys that are not FourM config: {unknown}", stacklevel=3)
    return cfg


def _key_report(missing, unexpected, limit=12) -> str:
    fmt = lambda ks: ", ".join(sorted(ks)[:limit]) + (f" ... (+{len(ks) - limit})" if len(ks) > limit else "")  # noqa: E731
    return f"missing keys ({len(missing)}): [{fmt(missing)}]; unexpected keys ({len(unexpected)}): [{fmt(unexpected)}]"


def load_pretrained(path: str | os.PathLike, map_location: str = "cpu") -> FourM:
    """A FourM built from the config in the file's metadata, every weight loaded strictly."""
    state, config = read_checkpoint(path)
    try:
        model = FourM.from_config(_model_config(config, path))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build the model from its metadata: {e}") from None
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config in its metadata; {_key_report(missing, unexpected)}")
    shapes = [k for k, v in model.state_dict().items() if v.shape != state[k].shape]
    if shapes:
        k = shapes[0]
        raise CheckpointError(f"{path}: {len(shapes)} tensors have the wrong shape, e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(model.state_dict()[k].shape)}")
    model.load_state_dict(state, strict=True)
    return model.to(map_location)


TRUNK_KEYS = ("dim", "encoder_depth", "decoder_depth", "num_heads", "mlp_ratio", "gated_mlp", "qkv_bias", "proj_bias",
              "mlp_bias", "norm_bias", "act_layer", "qk_norm", "patch_size")


def check_init(path: str | os.PathLike, model_config: dict, config: dict | None = None) -> dict:
    """The parsed config of the checkpoint a pretraining run starts from (``config``, when already read), after
    checking its transformer is the run's (same width, depths, heads, block flags); the modalities may differ. One
    CheckpointError naming what differs."""
    if config is None:
        try:
            _, config = read_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"init={path}: {e}") from None
    differ = {k: (config.get(k), model_config.get(k)) for k in TRUNK_KEYS
              if k in config and k in model_config and config[k] != model_config[k]}
    if differ:
        what = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(f"init={path}: its transformer is not this run's ({what}, checkpoint vs run); start from a "
                              "checkpoint of the same size (model=...)")
    return config


def init_from(model: FourM, path: str | os.PathLike) -> dict:
    """Start ``model`` from the weights of a 4M checkpoint (official or this project's) whose transformer is the same:
    every tensor of the same name and shape is copied (the blocks, and the embeddings of the modalities both have);
    the rest keeps its initialisation (a new modality's embedding and head, a token table of another size).
    Returns what was copied and what was not."""
    state, config = read_checkpoint(path)
    check_init(path, model.config, config)
    own = model.state_dict()
    copied = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(copied, strict=False)
    return {"copied": len(copied), "of": len(own),
            "new": sorted(k for k in own if k not in state),
            "other_shape": sorted(k for k in own if k in state and own[k].shape != state[k].shape),
            "unused": sorted(k for k in state if k not in own)}


def load_encoder(path: str | os.PathLike, modality: str | list[str] = "rgb@224", **overrides) -> FourMEncoder:
    """The encoder view for transfer (tokens after the final norm). Accepts official and our checkpoints.

    ``path="random"`` gives a randomly initialised encoder of the default (base, swiglu_nobias) size unless a
    ``config=`` override is given. Only encoder keys are loaded; every encoder key must be present.
    """
    domains = [modality] if isinstance(modality, str) else list(modality)
    if str(path) == "random":
        from fourm.models.factory import config_for

        cfg = overrides.pop("config", None) or config_for("fm_base_12e_12d_swiglu_nobias")
        return FourMEncoder.from_config(cfg, domains_in=domains, **overrides)
    state, config = read_checkpoint(path)
    cfg = _model_config(config, path)
    missing_mods = [d for d in domains if d not in cfg.get("domains_in", [])]
    if missing_mods:
        raise CheckpointError(f"{path}: the checkpoint has no encoder embedding for {missing_mods}; it has {cfg.get('domains_in')}")
    enc = FourMEncoder.from_config(cfg, domains_in=domains, **overrides)
    wanted = enc.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CheckpointError(f"{path}: encoder weights missing from the file; {_key_report(missing, [])}")
    picked = {}
    for k, v in wanted.items():
        t = state[k]
        if k.endswith("pos_emb") and t.shape != v.shape and t.ndim == 3 and v.ndim == 3:
            # another image_size than the checkpoint's: resize the grid (sequence tables are never resized)
            emb = enc.encoder_embeddings[k.split(".")[1]]
            old = int(round(t.shape[1] ** 0.5))
            t = resize_pos_emb(t, (old, old), emb.grid)
        picked[k] = t
    enc.load_state_dict(picked, strict=True)
    return enc


def save_checkpoint(model: FourM, path: str | os.PathLike, extra_metadata: dict | None = None,
                    state_dict: dict | None = None) -> Path:
    """Write a model in the official released format, atomically. Tied tensors are stored as separate copies.

    ``state_dict`` replaces ``model.state_dict()`` (e.g. the full weights gathered from FSDP shards)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = format_metadata(model.config)
    if extra_metadata:
        meta.update({f"x_{k}": str(v) for k, v in extra_metadata.items()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
