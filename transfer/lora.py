"""LoRA transfer (``protocol=lora``): low-rank adapters on the encoder's projections, through ``peft``.

The encoder's own weights stay as loaded (frozen); only the adapters (``lora_A``/``lora_B``) and the task's head are
trained, and the run keeps only those: ``adapter.safetensors`` in the run folder (the encoder is rebuilt from
``transfer.init``, then the adapter file is loaded on top, see :func:`load_adapter`).

Config (``lora:`` of ``transfer/configs/protocols.yaml``): ``rank``, ``alpha`` (the update is scaled by alpha / rank),
``dropout`` on the adapter's input, ``targets``: the encoder blocks' linear layers to adapt, by their name inside a
block (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, ``mlp.fc3`` of the SwiGLU MLP). Embeddings and heads
are never adapted.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

ADAPTER_FILE = "adapter.safetensors"
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "mlp.fc3")


def target_pattern(targets) -> str:
    """The peft ``target_modules`` regex of the encoder blocks' linear layers named in ``targets``."""
    targets = list(targets)
    unknown = sorted(set(targets) - set(BLOCK_LINEARS))
    if not targets or unknown:
        raise ValueError(f"lora.targets {targets}: choose from {list(BLOCK_LINEARS)}")
    names = "|".join(re.escape(t) for t in targets)
    return rf"(.*\.)?encoder\.\d+\.({names})"


def add_lora(encoder: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets=BLOCK_LINEARS) -> nn.Module:
    """Freeze ``encoder`` and inject LoRA adapters in place (returned for chaining); only adapters require grad."""
    from peft import LoraConfig, inject_adapter_in_model

    if int(rank) < 1:
        raise ValueError(f"lora.rank={rank}: give a rank >= 1")
    encoder.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                        target_modules=target_pattern(targets), bias="none")
    encoder = inject_adapter_in_model(config, encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad_(is_adapter(name))
    if not any(p.requires_grad for p in encoder.parameters()):
        raise ValueError(f"lora.targets {list(targets)} matched no layer of the encoder")
    return encoder


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a frozen-encoder run trains (adapters and heads): what its checkpoints keep."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
    """``<folder>/adapter.safetensors``: the trained parameters only, written atomically."""
    from safetensors.torch import save

    from fourm.files import atomic_write_bytes

    path = Path(folder) / ADAPTER_FILE
    atomic_write_bytes(path, save(trainable_state(model), metadata={k: str(v) for k, v in (metadata or {}).items()}))
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Load an adapter file into a model built the same way (encoder from its init, adapters added); every key of
    the file must exist in the model."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing = sorted(set(state) - set(dict(model.named_parameters())))
    if missing:
        raise ValueError(f"{path}: keys {missing[:5]} are not parameters of the model (built with other lora.targets?)")
    model.load_state_dict(state, strict=False)
