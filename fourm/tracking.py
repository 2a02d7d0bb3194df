"""Experiment trackers for a run folder: TensorBoard event files always, Weights & Biases on request.

A run's log records (:meth:`fourm.runs.Run.log`) that carry a ``step`` are mirrored here: every numeric field becomes
a scalar at that step (``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``val/...`` and the eval metrics). Records
without a step (events, final metrics) are written at the last step seen. The tracker is chosen by the run's config:
``_runtime.tracker`` (transfer) or ``_tracker`` (pretraining, tokenizers), ``tensorboard`` by default, ``wandb`` to
mirror the same scalars to Weights & Biases, ``none`` to write no event files. Tracking is bookkeeping: the keys start
with ``_`` and never enter the run's identity.

W&B runs are keyed by the run id, so a requeued job resumes the same W&B run. Without ``WANDB_API_KEY`` (or with
``WANDB_MODE=offline``) W&B writes offline under ``<run>/wandb`` and needs no network; ``wandb sync`` uploads it later.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "none")
TB_FOLDER = "tb"


class TrackerError(ValueError):
    """A tracker that cannot be used (unknown name, library missing); the message says the fix."""


def tracker_kind(config: dict) -> str:
    """The tracker a run's config asks for (``_runtime.tracker`` or ``_tracker``; default ``tensorboard``)."""
    kind = config.get("_tracker") or (config.get("_runtime") or {}).get("tracker") or "tensorboard"
    if kind not in TRACKERS:
        raise TrackerError(f"tracker {kind!r}: choose one of {list(TRACKERS)} (_runtime.tracker / _tracker)")
    return kind


def scalars(record: dict) -> dict[str, float]:
    """The finite numeric fields of a log record (bools, strings, nested values and ``step``/``time`` left out)."""
    out = {}
    for k, v in record.items():
        if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class Tracker:
    """Scalars of one run folder to TensorBoard (``<run>/tb``) and, for ``kind="wandb"``, to W&B."""

    def __init__(self, run_path: str | os.PathLike, kind: str = "tensorboard", run_id: str | None = None,
                 config: dict | None = None):
        self.path, self.kind, self.step = Path(run_path), kind, 0
        self._tb = self._wandb = None
        if kind == "none":
            return
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(self.path / TB_FOLDER), flush_secs=30)
        if kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise TrackerError("_runtime.tracker=wandb needs the wandb package (pip install wandb)") from None
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "fourm-bench"), id=run_id or self.path.name,
                                     name=run_id or self.path.name, resume="allow", dir=str(self.path), mode=mode,
                                     config={k: v for k, v in (config or {}).items() if not str(k).startswith("_")},
                                     reinit="create_new")

    def log(self, record: dict[str, Any]) -> None:
        if "step" in record and isinstance(record["step"], (int, float)) and not isinstance(record["step"], bool):
            self.step = int(record["step"])
        values = scalars(record)
        if not values:
            return
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, self.step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=self.step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_scalars(run_path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard files: ``{tag: [(step, value), ...]}`` in write order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_path) / TB_FOLDER
    if not folder.is_dir():
        return {}
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
