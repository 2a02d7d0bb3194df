"""Tokenizer checkpoints: weights as safetensors, resumable training state beside them.

Weights follow the official 4M convention: the model config sits in the safetensors ``__metadata__`` with every value
stored as ``str(value)`` and parsed back with :func:`ast.literal_eval`. The training state (optimizer, step, RNG) is a
``torch.save`` file next to the weights: ``step_000120.safetensors`` + ``step_000120.state.pt``. Both are written
atomically, weights first, so a checkpoint counts only once its state file exists.
"""
from __future__ import annotations

import ast
import io
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from fourm.files import atomic_write_bytes  # noqa: F401  (used here and by the tokenizer modules)
from fourm.tokenizers import official
from fourm.tokenizers.mlp_vqvae import MLPVQVAE, MLPVQVAEConfig
from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig

_STEP_RE = re.compile(r"^step_(\d+)\.state\.pt$")


def metadata_from_config(config: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in config.items()}


def config_from_metadata(metadata: dict[str, str]) -> dict:
    """Inverse of ``str(value)``: literals are parsed, anything else (e.g. ``depth``) stays a string."""
    out = {}
    for k, v in metadata.items():
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


ARCHITECTURE_KEY = "architecture"  # metadata key telling a vector tokenizer (mlp_vqvae) from a spatial VQ-VAE


def save_tokenizer(model: VQVAE | MLPVQVAE, path: str | os.PathLike) -> None:
    """Write the weights (every tensor of the state dict, contiguous) with the config as metadata, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = metadata_from_config(model.config.to_dict())
    if isinstance(model, MLPVQVAE):
        metadata[ARCHITECTURE_KEY] = "mlp_vqvae"
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def resolve_tokenizer_path(path: str | os.PathLike) -> Path:
    """A file, a run folder (its ``tokenizer.safetensors``), or a Hugging Face id (``EPFL-VILAB/4M_tokenizers_...``)
    found in the local Hugging Face cache; a miss is one error naming the file to download."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.safetensors"
    if p.exists():
        return p
    s = str(path)
    if s.count("/") == 1 and not s.startswith((".", "/", "~")) and not s.endswith(".safetensors"):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(s, "model.safetensors")
        if isinstance(found, str):
            return Path(found)
        raise FileNotFoundError(
            f"tokenizer {s!r} is not in the local Hugging Face cache; download its model.safetensors on a machine "
            f"with network (`huggingface-cli download {s}`) and copy the cache, or pass the file's local path")
    raise FileNotFoundError(
        f"tokenizer checkpoint {p} does not exist; train one with `fourm-bench tokenize train` and pass its run "
        "folder or its tokenizer.safetensors, or give an official tokenizer file or Hugging Face id")


def load_tokenizer(path: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild a tokenizer from a safetensors checkpoint (or a run folder holding ``tokenizer.safetensors``, or a
    Hugging Face id in the local cache): an official 4M tokenizer (:mod:`fourm.tokenizers.official`: ``VQVAE`` or
    ``DiVAE``), or this project's own spatial :class:`VQVAE` or :class:`~fourm.tokenizers.mlp_vqvae.MLPVQVAE`."""
    path = resolve_tokenizer_path(path)
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            metadata = f.metadata() or {}
            if ARCHITECTURE_KEY not in metadata and official.is_official(metadata):
                return official.load_official(path, metadata)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except official.TokenizerError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors tokenizer checkpoint ({e})") from e
    if not metadata:
        raise ValueError(f"{path}: has no __metadata__ config, so it is not a tokenizer checkpoint (official 4M "
                         "tokenizers store enc_type, quant_type, ...; this project's store their VQVAEConfig)")
    architecture = metadata.pop(ARCHITECTURE_KEY, "vqvae")
    try:
        if architecture == "mlp_vqvae":
            model = MLPVQVAE(MLPVQVAEConfig(**config_from_metadata(metadata)))
        else:
            model = VQVAE(VQVAEConfig.from_dict(config_from_metadata(metadata)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: __metadata__ is not a tokenizer config ({e})") from e
    model.load_state_dict(tensors, strict=True)
    return model.eval()


# --- resumable training state --------------------------------------------------------------------------
def checkpoint_paths(folder: str | os.PathLike, step: int) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder / f"step_{step:06d}.safetensors", folder / f"step_{step:06d}.state.pt"


def save_training_checkpoint(folder, model: VQVAE, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> Path:
    """Weights, then optimizer/step/RNG state: the state file marks the checkpoint complete."""
    weights, state_path = checkpoint_paths(folder, step)
    save_tokenizer(model, weights)
    state = {"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), **extra}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(state_path, buf.getvalue())
    return weights


def latest_step(folder: str | os.PathLike) -> int | None:
    """Highest step whose weights and state both exist, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = []
    for name in os.listdir(folder):
        m = _STEP_RE.match(name)
        if m and checkpoint_paths(folder, int(m.group(1)))[0].exists():
            steps.append(int(m.group(1)))
    return max(steps) if steps else None


def load_training_checkpoint(folder, step: int) -> tuple[VQVAE, dict]:
    weights, state_path = checkpoint_paths(folder, step)
    model = load_tokenizer(weights)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    return model, state


def list_steps(folder: str | os.PathLike) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for m in map(_STEP_RE.match, os.listdir(folder)) if m)
