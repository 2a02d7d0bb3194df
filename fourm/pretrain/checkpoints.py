"""Pretraining checkpoints: weights in the official released format plus the training state beside them.

``<run>/checkpoints/step-000100/{model.safetensors, state.pt, data.json}`` is written in a temp folder and renamed into place,
so a checkpoint folder either exists whole or not at all; ``state.pt`` holds only tensors and plain values
(loadable with ``torch.load(weights_only=True)``); ``data.json`` is the streaming reader's position.
"""
from __future__ import annotations

import json
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


def save_state(ckpt_dir: str | os.PathLike, model, opt, *, step: int, tokens_seen: int, keep: int = 2,
               model_state: dict | None = None, opt_state: dict | None = None, data_state: dict | None = None) -> Path:
    """Write ``step-NNNNNN/`` whole or not at all. ``model_state``/``opt_state`` replace the model's and optimizer's
    own state dicts (FSDP: the full state gathered on rank 0, the optimizer's keyed by parameter name)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:06d}"
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=ckpt_dir))
    try:
        save_checkpoint(model, tmp / "model.safetensors", extra_metadata={"step": step, "tokens_seen": tokens_seen},
                        state_dict=model_state)
        fmt = "by_name" if opt_state is not None else "by_index"
        torch.save({"step": step, "tokens_seen": tokens_seen, "optimizer_format": fmt,
                    "optimizer": opt.state_dict() if opt_state is None else opt_state}, tmp / "state.pt")
        if data_state is not None:
            (tmp / "data.json").write_text(json.dumps(data_state))
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(ckpt_dir)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: str | os.PathLike, model, opt) -> dict:
    """Restore weights (strictly) and, when ``opt`` is given, the optimizer state saved by index (DDP or one
    process); returns {'step', 'tokens_seen', 'optimizer', 'optimizer_format'}."""
    path = Path(path)
    weights = load_pretrained(path / "model.safetensors")
    model.load_state_dict(weights.state_dict(), strict=True)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    fmt = state.get("optimizer_format", "by_index")
    if opt is not None:
        if fmt != "by_index":
            raise ValueError(f"{path}/state.pt holds the optimizer by parameter name (an FSDP run): resume it with "
                             "distributed.strategy=fsdp")
        opt.load_state_dict(state["optimizer"])
    return {"step": int(state["step"]), "tokens_seen": int(state["tokens_seen"]), "optimizer": state["optimizer"],
            "optimizer_format": fmt}


def read_data_state(path: str | os.PathLike) -> dict | None:
    """The reader's position saved with a checkpoint (None for checkpoints of in-memory data)."""
    f = Path(path) / "data.json"
    return json.loads(f.read_text()) if f.exists() else None
