"""Pretraining checkpoints: weights in the official released format plus the training state beside them.

``<run>/checkpoints/step-000100/{model.safetensors, state.pt}`` is written in a temp folder and renamed into place,
so a checkpoint folder either exists whole or not at all; ``state.pt`` holds only tensors and plain values
(loadable with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from fourm.models import load_pretrained, save_checkpoint


def checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    d = Path(ckpt_dir)
    if not d.exists():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    found = checkpoints(ckpt_dir)
    return found[-1] if found else None


def save_state(ckpt_dir: str | os.PathLike, model, opt, *, step: int, tokens_seen: int, keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:06d}"
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=ckpt_dir))
    try:
        save_checkpoint(model, tmp / "model.safetensors", extra_metadata={"step": step, "tokens_seen": tokens_seen})
        torch.save({"step": step, "tokens_seen": tokens_seen, "optimizer": opt.state_dict()}, tmp / "state.pt")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(ckpt_dir)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: str | os.PathLike, model, opt) -> dict:
    """Restore weights (strictly) and optimizer state; returns {'step', 'tokens_seen'}."""
    path = Path(path)
    weights = load_pretrained(path / "model.safetensors")
    model.load_state_dict(weights.state_dict(), strict=True)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    return {"step": int(state["step"]), "tokens_seen": int(state["tokens_seen"])}
