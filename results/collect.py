"""Collect run folders into one long table: one row per (run, metric).

Only folders with ``DONE`` are results. Partial folders (no ``DONE``) are counted and listed, never read. Corrupt folders
(unparsable ``config.yaml``/``metrics.json``, ``DONE`` without ``metrics.json``, a malformed ``evals`` list) are counted and
listed with the reason; the scan never stops on them.

Columns of the long table::

    run_id, metric, value          the result (value is a float; non-numeric metric leaves are skipped)
    source                         "eval" (from the selected entry of metrics["evals"]) or "final" (top-level metrics)
    eval_step                      the ``step`` of the run's selected eval (NaN without evals or without a step)
    select                         the rule applied to this run: "last", "best:val/loss:min", "last(no val/loss)",
                                   or "final" (no evals: the top-level metrics are the result)
    path                           the run folder
    <config keys, dotted>          e.g. ``model.name``, ``transfer.task``, ``seed``; lists are stored as compact JSON
    env.<field>                    git_sha, host, python, torch, time, slurm_job_id, slurm_array_task_id from env.json

Metric names: nested dicts are flattened with ``/`` (``{"val": {"top1": 1}}`` -> ``val/top1``, the same name a flat
``"val/top1"`` key gives).

Selection rule when ``metrics.json`` holds ``"evals": [{"step": ..., "val/loss": ...}, ...]`` (one entry per evaluation):

* ``last`` — the entry with the largest ``step`` (list order when steps are missing).
* ``best:METRIC[:min|max]`` — the entry with the best finite ``METRIC``; the direction defaults to ``min`` for names
  that look like losses/errors (loss, err, rmse, abs_rel, ...) and ``max`` otherwise; ties go to the later entry. A run
  whose evals never report ``METRIC`` falls back to ``last``; its ``select`` column says so and it is listed in
  :attr:`Collection.fallbacks`.

The selected entry's metrics (``source="eval"``) are added to the top-level ones (``source="final"``) and replace
top-level metrics of the same name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from fourm.runs import atomic_write_json, find_runs
from results import block_yaml

try:  # libyaml is ~20x faster than the pure-Python loader; fall back so a build without it still works
    _YamlLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader

BASE_COLUMNS = ("run_id", "metric", "value", "source", "eval_step", "select", "path")
ENV_FIELDS = ("git_sha", "host", "python", "torch", "time")
ENV_SLURM_FIELDS = {"SLURM_JOB_ID": "slurm_job_id", "SLURM_ARRAY_TASK_ID": "slurm_array_task_id"}
_MIN_HINTS = ("loss", "err", "rmse", "mae", "abs_rel", "sq_rel", "nll", "perplexity", "ppl", "fid")


def default_direction(metric: str) -> str:
    """``min`` for names that look like losses or errors, ``max`` otherwise (accuracies, mIoU, AP, delta1)."""
    leaf = metric.replace(".", "/").rsplit("/", 1)[-1].lower()
    return "min" if any(h in leaf for h in _MIN_HINTS) else "max"


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which entry of ``metrics["evals"]`` is a run's result: ``last`` or ``best`` on ``metric`` in ``mode``."""

    rule: str = "last"
    metric: str | None = None
    mode: str | None = None

    @classmethod
    def parse(cls, spec: "str | Selection | None" = None, by: str | None = None) -> "Selection":
        """``"last"``, ``"best:val/loss"``, ``"best:val/top1:max"`` or ``("best", by="val/loss:min")``."""
        if isinstance(spec, Selection):
            return spec
        spec = spec or "last"
        parts = spec.split(":")
        rule = parts[0]
        if by is not None:
            if len(parts) > 1:
                raise ValueError(f"selection {spec!r}: give the metric either in the rule or in by=, not both")
            parts = [rule, *by.split(":")]
        if rule == "last":
            if len(parts) > 1:
                raise ValueError(f"selection {spec!r}: 'last' takes no metric; use 'best:METRIC[:min|max]'")
            return cls("last")
        if rule != "best":
            raise ValueError(f"selection rule {rule!r} is unknown; use 'last' or 'best:METRIC[:min|max]'")
        if len(parts) < 2 or not parts[1]:
            raise ValueError("selection 'best' needs a validation metric: 'best:val/loss' or --by val/loss[:min|max]")
        metric = parts[1]
        mode = parts[2] if len(parts) > 2 else default_direction(metric)
        if mode not in ("min", "max") or len(parts) > 3:
            raise ValueError(f"selection {spec!r}: the direction must be 'min' or 'max'")
        return cls("best", metric, mode)

    def __str__(self) -> str:
        return "last" if self.rule == "last" else f"best:{self.metric}:{self.mode}"

    def choose(self, evals: list[dict]) -> tuple[int, str]:
        """Index of the selected eval and the rule actually applied (a ``best`` without the metric says so)."""
        if self.rule == "best":
            best_i, best_v = -1, math.nan
            for i, e in enumerate(evals):
                v = _flat_metrics(e).get(self.metric)
                if v is None or not math.isfinite(v):
                    continue
                better = best_i < 0 or (v < best_v if self.mode == "min" else v > best_v)
                # ties go to the later eval (more training)
                if better or (v == best_v and _step(e, i) >= _step(evals[best_i], best_i)):
                    best_i, best_v = i, v
            if best_i >= 0:
                return best_i, str(self)
            return _last_index(evals), f"last(no {self.metric})"
        return _last_index(evals), "last"


def _step(e: dict, i: int) -> float:
    s = e.get("step")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else float(i)


def _last_index(evals: list[dict]) -> int:
    if all(isinstance(e.get("step"), (int, float)) for e in evals):
        return max(range(len(evals)), key=lambda i: (evals[i]["step"], i))
    return len(evals) - 1


def _flat_metrics(d: dict, prefix: str = "", out: dict | None = None) -> dict[str, float]:
    """Numeric leaves of a (nested) metrics dict, keys joined with '/'. Strings, lists and None are skipped."""
    out = {} if out is None else out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _flat_metrics(v, key + "/", out)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def flatten_config(d: dict, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``; lists become compact JSON so every cell is a scalar."""
    out = {} if out is None else out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flatten_config(v, key + ".", out)
        elif isinstance(v, (list, tuple, dict)):
            out[key] = json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)
        else:
            out[key] = v
    return out


@dataclasses.dataclass
class Collection:
    """The long table plus what the scan saw: counts, partial and corrupt folders, selection fallbacks."""

    table: pd.DataFrame
    selection: Selection
    roots: list[str]
    done: int = 0
    partial: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "runs": self.done + len(self.partial) + len(self.corrupt),
            "done": self.done,
            "partial": len(self.partial),
            "corrupt": len(self.corrupt),
            "rows": len(self.table),
        }

    def summary(self) -> dict:
        """JSON-able description: roots, selection rule, counts, and every partial/corrupt folder with its reason."""
        return {
            "roots": self.roots,
            "select": str(self.selection),
            "counts": self.counts,
            "partial": self.partial,
            "corrupt": [{"path": p, "reason": r} for p, r in self.corrupt],
            "select_fallbacks": self.fallbacks,
            "warnings": self.warnings,
        }

    def save(self, out_dir: str | os.PathLike, name: str = "collected") -> dict[str, Path]:
        """Write ``<name>.csv``, ``<name>.parquet`` and ``<name>.json`` (the summary), each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / f"{name}.csv", "parquet": out / f"{name}.parquet", "json": out / f"{name}.json"}
        _atomic_to(paths["csv"], lambda p: self.table.to_csv(p, index=False))
        _atomic_to(paths["parquet"], lambda p: self.table.to_parquet(p, index=False))
        atomic_write_json(paths["json"], self.summary())
        return paths


def _atomic_to(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_env(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, "env.json"), "rb") as f:
            env = json.loads(f.read())
    except FileNotFoundError:
        return {}
    if not isinstance(env, dict):
        raise ValueError("env.json is not a JSON object")
    row = {f"env.{k}": env.get(k) for k in ENV_FIELDS if k in env}
    slurm = env.get("slurm") or {}
    for k, col in ENV_SLURM_FIELDS.items():
        if k in slurm:
            row[f"env.{col}"] = str(slurm[k])
    return row


def read_config(path: str | os.PathLike) -> dict:
    """A run's config.yaml as ``yaml.safe_load`` reads it (fast path: :mod:`results.block_yaml`); ValueError if broken."""
    try:
        with open(os.path.join(path, "config.yaml"), "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config.yaml is not UTF-8: {e}") from None
    config = block_yaml.load(text)
    if config is None:
        try:
            config = yaml.load(text, Loader=_YamlLoader)
        except yaml.YAMLError as e:
            raise ValueError(f"config.yaml does not parse: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config.yaml holds a {type(config).__name__}, not a mapping")
    return config


def _read_done_run(path: str, selection: Selection):
    """(config row, metrics dict, source dict, eval_step, applied rule) or raise ValueError with the reason."""
    config = read_config(path)
    try:
        with open(os.path.join(path, "metrics.json"), "rb") as f:
            metrics = json.loads(f.read())
    except FileNotFoundError:
        raise ValueError("DONE but no metrics.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"metrics.json does not parse: {e}") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics.json holds a {type(metrics).__name__}, not an object")
    evals = metrics.pop("evals", None)
    values = _flat_metrics(metrics)
    sources = dict.fromkeys(values, "final")
    step, rule = math.nan, "final"  # nothing to select from
    if evals is not None:
        if not isinstance(evals, list) or not all(isinstance(e, dict) for e in evals):
            raise ValueError("metrics.json 'evals' must be a list of objects ({'step': ..., 'val/...': ...})")
        if evals:
            i, rule = selection.choose(evals)
            chosen = _flat_metrics(evals[i])
            step = chosen.pop("step", math.nan)
            values.update(chosen)
            sources.update(dict.fromkeys(chosen, "eval"))
    return flatten_config(config), values, sources, step, rule


def _kinds(column: list) -> set[str]:
    """The kinds ("bool", "num", "str") of the non-null values of a column; type-level so 10k runs stay cheap."""
    kinds = set()
    for t in set(map(type, column)):
        if t is type(None):
            continue
        kinds.add("bool" if t is bool else "num" if issubclass(t, (int, float)) else "str")
    return kinds


def _harmonise(column: list) -> list:
    """A column mixing kinds (e.g. 3 and "3") becomes all strings, so CSV and parquet round-trip the same."""
    if len(_kinds(column)) <= 1:
        return column
    return [None if v is None else str(v) for v in column]


def collect(
    *roots: str | os.PathLike,
    select: "str | Selection" = "last",
    by: str | None = None,
    progress: bool | None = None,
) -> Collection:
    """Scan run folders under ``roots`` into a :class:`Collection` (one long table; see the module docstring)."""
    if not roots:
        raise ValueError("collect() needs at least one run root")
    for r in roots:
        if not Path(r).is_dir():
            raise FileNotFoundError(f"run root {r} does not exist or is not a folder")
    selection = Selection.parse(select, by)
    runs = find_runs(*roots)
    result = Collection(table=pd.DataFrame(), selection=selection, roots=[str(r) for r in roots])

    # Build columns, not per-run frames: one DataFrame construction at the end is what makes 10k runs fast.
    run_rows: list[dict] = []
    metric_run: list[int] = []
    metric_name: list[str] = []
    metric_value: list[float] = []
    metric_source: list[str] = []
    show = progress if progress is not None else len(runs) > 2000
    for run in tqdm(runs, desc="collect", unit="run", disable=not show, mininterval=0.5):
        path = str(run.path)  # plain strings: pathlib costs more than the reads at 10k runs
        if not os.path.exists(os.path.join(path, "DONE")):
            result.partial.append(path)
            continue
        try:
            config, values, sources, step, rule = _read_done_run(path, selection)
        except (ValueError, OSError) as e:
            result.corrupt.append((path, str(e)))
            continue
        try:
            env = _read_env(path)
        except (ValueError, OSError) as e:  # env.json is provenance, not a result: keep the run, say so
            env = {}
            result.warnings.append(f"{path}: env.json unreadable ({e})")
        if rule.startswith("last(no"):
            result.fallbacks.append(path)
        index = len(run_rows)
        row = {"run_id": run.id, "eval_step": step, "select": rule, "path": path}
        for k, v in config.items():
            row[f"config.{k}" if k in BASE_COLUMNS else k] = v
        row.update(env)
        run_rows.append(row)
        for name, value in values.items():
            metric_run.append(index)
            metric_name.append(name)
            metric_value.append(value)
            metric_source.append(sources[name])
    result.done = len(run_rows)
    result.table = _build_table(run_rows, metric_run, metric_name, metric_value, metric_source)
    result.table.attrs.update({"select": str(selection), **result.counts})
    return result


def _build_table(run_rows, metric_run, metric_name, metric_value, metric_source) -> pd.DataFrame:
    keys: dict[str, None] = {}
    for row in run_rows:
        keys.update(dict.fromkeys(row))
    fixed = ["run_id", "eval_step", "select", "path"]
    config_keys = sorted(k for k in keys if k not in fixed and not k.startswith("env."))
    env_keys = sorted(k for k in keys if k.startswith("env."))
    take = np.asarray(metric_run, dtype=np.intp)
    data: dict[str, Any] = {
        "run_id": np.asarray([r["run_id"] for r in run_rows], dtype=object)[take],
        "metric": metric_name,
        "value": np.asarray(metric_value, dtype=float),
        "source": metric_source,
        "eval_step": np.asarray([r["eval_step"] for r in run_rows], dtype=float)[take],
        "select": np.asarray([r["select"] for r in run_rows], dtype=object)[take],
        "path": np.asarray([r["path"] for r in run_rows], dtype=object)[take],
    }
    for k in config_keys + env_keys:
        column = _harmonise([r.get(k) for r in run_rows])
        data[k] = pd.Series(column, dtype=_dtype_of(column)).take(take).reset_index(drop=True)
    return pd.DataFrame(data)


def _dtype_of(column: list):
    kinds = _kinds(column)
    if kinds == {"num"}:
        if any(isinstance(v, float) for v in column):
            return float
        return "Int64" if None in column else "int64"  # nullable ints: a seed missing in one run stays an int
    if kinds == {"bool"} and None not in column:
        return bool
    return None if kinds == {"str"} else object  # strings: let pandas pick its string dtype


def load_collected(path: str | os.PathLike) -> pd.DataFrame:
    """Read a collected table back (``.parquet`` or ``.csv``), restoring ``attrs`` from the ``.json`` summary beside it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; write it with `fourm-bench results collect ROOT... --out DIR`")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: expected a .parquet or .csv written by `fourm-bench results collect`")
    missing = [c for c in ("run_id", "metric", "value") if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: it is not a table written by `fourm-bench results collect`")
    summary = path.with_suffix(".json")
    if summary.exists():
        info = json.loads(summary.read_text())
        df.attrs.update({"select": info.get("select"), **info.get("counts", {})})
    return df


def describe(collection: Collection, limit: int = 10) -> str:
    """Human summary: counts, the selection rule, and the first partial/corrupt folders with reasons."""
    c = collection.counts
    lines = [
        f"{c['runs']} run folders: {c['done']} done, {c['partial']} partial (no DONE), {c['corrupt']} corrupt; "
        f"{c['rows']} rows; select={collection.selection}"
    ]
    lines += _listing("partial", collection.partial, limit)
    lines += _listing("corrupt", [f"{p}: {r}" for p, r in collection.corrupt], limit)
    lines += _listing(f"fell back to last (no {collection.selection.metric})", collection.fallbacks, limit)
    lines += _listing("warning", collection.warnings, limit)
    return "\n".join(lines)


def _listing(label: str, items: Iterable[str], limit: int) -> list[str]:
    items = list(items)
    lines = [f"  {label}: {x}" for x in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more {label}")
    return lines
