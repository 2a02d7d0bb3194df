"""Scaling curves and ablation bar charts (matplotlib, Agg canvas; PNG and PDF).

``scaling_plot``: x is ``model_size``, ``data_size``, ``train_tokens`` (aliases resolved to the first config key present,
see :data:`X_ALIASES`) or any config key; y is ``avg_loss`` (the ablation average of per-task validation losses) or a
metric name; one line per value of ``series``; error bars are the std over seeds. Numeric x spanning a decade or more
gets a log axis; model sizes given as letters or names (N/T/S/B/L/XL/H, fm_base_..., vit_large) are placed in that order.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from results.tables import value_text, ablation_frame, size_from_name

X_ALIASES = {
    "model_size": ("model.params", "model.num_params", "model_size", "model.size", "model.name", "size"),
    "data_size": ("data.size", "data.num_samples", "data_size", "pretrain.data_size", "data.samples"),
    "train_tokens": ("pretrain.train_tokens", "train_tokens", "pretrain.total_tokens", "pretrain.tokens", "tokens"),
}
_SIZE_ORDER = ["P", "N", "Mi", "T", "S", "B", "L", "XL", "H"]  # pico, nano, micro: this suite's CPU sizes
Y_ALIASES = {"avg_loss": "loss"}


@dataclasses.dataclass
class PlotResult:
    """The files written and the numbers drawn (one row per point: series, x, mean, std, n)."""

    paths: dict[str, Path]
    data: pd.DataFrame
    xscale: str = "linear"


def resolve_x(df: pd.DataFrame, x: str) -> str:
    """The config column behind ``x`` (a column name, or an alias in :data:`X_ALIASES`)."""
    if x in df.columns:
        return x
    for cand in X_ALIASES.get(x, ()):
        if cand in df.columns and df[cand].notna().any():
            return cand
    tried = [x, *X_ALIASES.get(x, ())]
    raise KeyError(f"--x {x}: none of the config keys {tried} is in the collected table; pass a config key explicitly")


def _save(fig: Figure, out: Path, name: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    paths = {}
    for fmt in ("png", "pdf"):
        path = out / f"{name}.{fmt}"
        tmp = out / f".{name}.{os.getpid()}.{fmt}.tmp"
        try:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        paths[fmt] = path
    return paths


def _x_positions(values: pd.Series) -> tuple[np.ndarray, list[str] | None, bool]:
    """Numeric x (and whether a log axis fits), or ordered positions plus tick labels for size letters / strings."""
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all():
        v = num.to_numpy(dtype=float)
        log = bool((v > 0).all() and v.max() / v.min() >= 10)
        return v, None, log
    letters = [size_from_name(v) for v in values]
    if all(letters):
        order = sorted(set(letters), key=_SIZE_ORDER.index)
        return np.array([order.index(s) for s in letters], dtype=float), order, False
    order = sorted(set(map(value_text, values)))
    return np.array([order.index(value_text(v)) for v in values], dtype=float), order, False


def _series_order(labels) -> list[str]:
    """Sizes as P < N < Mi < T < S < B < L < XL < H, numbers numerically, anything else alphabetically."""
    labels = list(labels)
    if all(size_from_name(x) for x in labels):
        return sorted(labels, key=lambda x: _SIZE_ORDER.index(size_from_name(x)))
    num = pd.to_numeric(pd.Series(labels), errors="coerce")
    if num.notna().all():
        return [labels[i] for i in np.argsort(num.to_numpy(), kind="stable")]
    return sorted(labels)


def scaling_plot(long_df: pd.DataFrame, *, x: str, y: str = "avg_loss", series: str | None = None,
                 out: str | os.PathLike, name: str | None = None, tasks: Sequence[str] | None = None,
                 where: Mapping[str, Any] | None = None, title: str | None = None, logy: bool = False) -> PlotResult:
    """A scaling curve per ``series`` value: y (mean ± std over seeds) against x; writes ``<name>.png`` and ``.pdf``."""
    x_key = resolve_x(long_df, x)
    if series is not None and series not in long_df.columns:
        raise KeyError(f"--series {series}: no such config column in the collected table")
    metric = Y_ALIASES.get(y, y)
    keys = [x_key] + ([series] if series else [])
    frame, _, tasks_used, info = ablation_frame(long_df, metric=metric, tasks=tasks, keys=keys, where=where)
    if not info["avg"]:
        raise ValueError(f"y={y}: the tasks {tasks_used} mix min- and max-direction metrics; pick tasks with --tasks")
    data = pd.DataFrame({
        "series": frame[series].map(value_text) if series else "all",
        "x": frame[x_key],
        "mean": frame["avg"],
        "std": frame["avg_std"],
        "n": frame["avg_n"],
    })
    xs, ticks, logx = _x_positions(data["x"])
    data["x_pos"] = xs
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot()
    for label in _series_order(data["series"].unique()):
        g = data[data["series"] == label].sort_values("x_pos")
        yerr = g["std"].where(g["std"].notna(), 0.0).to_numpy(dtype=float)
        ax.errorbar(g["x_pos"], g["mean"], yerr=yerr, marker="o", capsize=3, linewidth=1.5,
                    label=f"{series}={label}" if series else None)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlabel(x_key if x_key == x else f"{x} ({x_key})")
    task_note = f" over {', '.join(tasks_used)}" if len(tasks_used) > 1 else (f" ({tasks_used[0]})" if tasks_used[0] != metric else "")
    ax.set_ylabel(("avg " if len(tasks_used) > 1 else "") + metric + task_note)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    paths = _save(fig, Path(out), name or f"scaling_{x}_{y}".replace("/", "_"))
    return PlotResult(paths, data, "log" if logx else "linear")


def ablation_bars(long_df: pd.DataFrame, *, out: str | os.PathLike, name: str = "ablation_bars", column: str = "avg",
                  metric: str | Mapping[str, str] = "loss", title: str | None = None, **ablation_kwargs) -> PlotResult:
    """One bar per grid point of the ablation (``column``: ``avg`` or a task), std over seeds as error bars, best highlighted."""
    frame, keys, tasks, info = ablation_frame(long_df, metric=metric, **ablation_kwargs)
    if column not in frame.columns:
        raise KeyError(f"column {column!r} is not in the ablation; choose avg or one of {tasks}")
    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={value_text(r[k])}" for k in keys) or "all" for r in frame.to_dict("records")]
    means = frame[column].to_numpy(dtype=float)
    stds = np.nan_to_num(frame[f"{column}_std"].to_numpy(dtype=float))
    direction = (next(iter(set(info["direction"].values()))) if column == "avg" else info["direction"][column])
    finite = np.isfinite(means)
    best = int(np.nanargmin(means) if direction == "min" else np.nanargmax(means)) if finite.any() else -1
    fig = Figure(figsize=(max(4.0, 0.7 * len(labels) + 1.5), 3.6))
    ax = fig.add_subplot()
    colors = ["tab:orange" if i == best else "tab:blue" for i in range(len(labels))]
    ax.bar(range(len(labels)), np.nan_to_num(means), yerr=stds, capsize=3, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ylabel = "avg " + ", ".join(sorted(set(info["metric"].values()))) if column == "avg" else f"{column} {info['metric'][column]}"
    ax.set_ylabel(ylabel + (" (rel. to ref)" if column == "avg" and info["reference"] else ""))
    lo = np.nanmin(means - stds) if finite.any() else 0.0
    hi = np.nanmax(means + stds) if finite.any() else 1.0
    if lo > 0 and (hi - lo) < 0.5 * hi:  # zoom in on small differences; the axis says where it starts
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or f"ablation ({'lower' if direction == 'min' else 'higher'} is better; best in orange)", fontsize=9)
    data = pd.DataFrame({"label": labels, "mean": means, "std": frame[f"{column}_std"], "n": frame[f"{column}_n"]})
    return PlotResult(_save(fig, Path(out), name), data)
