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
import multiprocessing
import operator
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from fourm.runs import atomic_write_json, find_run_paths

try:  # libyaml is ~20x faster than the pure-Python loader; fall back so a build without it still works
    _YamlLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader

PARALLEL_FROM = 4000  # below this many folders a second process costs more than it saves
BASE_COLUMNS = ("run_id", "metric", "value", "source", "eval_step", "select", "path")
_BASE_SET = frozenset(BASE_COLUMNS)
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
    """The entry with the largest step, the later one on ties (``max`` of ``(step, index)``); else the last entry."""
    if not evals:
        raise ValueError("no evals to select from")
    steps = [e.get("step") for e in evals]
    best_i, best = 0, steps[0]
    for i, s in enumerate(steps):
        if not isinstance(s, (int, float)):
            return len(evals) - 1
        if i and (s is best or s == best or s > best):  # (s, i) > (best, best_i), as tuples compare: ties go later
            best_i, best = i, s
    return best_i


def _flat_metrics(d: dict, prefix: str = "", out: dict | None = None) -> dict[str, float]:
    """Numeric leaves of a (nested) metrics dict, keys joined with '/'. Strings, lists and None are skipped."""
    out = {} if out is None else out
    for k, v in d.items():
        t = type(v)
        if t is float:  # the common leaf first, without isinstance
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict):
            _flat_metrics(v, f"{prefix}{k}/", out)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def flatten_config(d: dict, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``; lists become compact JSON so every cell is a scalar."""
    out = {} if out is None else out
    for k, v in d.items():
        key = f"{prefix}{k}"
        t = type(v)
        if t is str or t is int or t is float or t is bool or v is None:  # the common leaves, without isinstance
            out[key] = v
        elif isinstance(v, dict) and v:
            flatten_config(v, key + ".", out)
        elif isinstance(v, (list, tuple, dict)):
            out[key] = _compact_json(v)
        else:
            out[key] = v
    return out


# json.dumps(v, separators=(",", ":"), sort_keys=True, default=str) without building an encoder per call
_compact_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=str).encode
_json_decode = json.JSONDecoder().decode  # what json.loads uses for a str


def _loads(data: bytes) -> Any:
    """``json.loads(data)``: UTF-8 text straight to the decoder; anything else (BOMs, UTF-16/32, errors) via loads."""
    try:
        return _json_decode(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError, JSONDecodeError: json.loads gives the same result or the same error
        return json.loads(data)


_CHUNK = 1 << 16


def _read_bytes(file: str) -> bytes:
    """The whole file, with ``os.open``/``os.read`` (no file object: they cost more than the read for small files).

    Errors are those of ``open(file, "rb").read()``: the OSError subclass, its message and the file name.
    """
    fd = os.open(file, os.O_RDONLY)
    try:
        data = os.read(fd, _CHUNK)
        if data:
            chunks = [data]
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            if len(chunks) > 1:
                data = b"".join(chunks)
        return data
    except OSError as e:  # e.g. a folder named metrics.json: os.read says so without the name, open() with it
        if e.filename is None:
            raise OSError(e.errno, e.strerror, file) from None
        raise
    finally:
        os.close(fd)


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


def _read_env(path: str, base: str | None = None) -> dict[str, Any]:
    try:
        data = _read_bytes((os.path.join(path, "") if base is None else base) + "env.json")
    except FileNotFoundError:
        return {}
    env = _loads(data)
    if not isinstance(env, dict):
        raise ValueError("env.json is not a JSON object")
    row = {f"env.{k}": env.get(k) for k in ENV_FIELDS if k in env}
    slurm = env.get("slurm") or {}
    for k, col in ENV_SLURM_FIELDS.items():
        if k in slurm:
            row[f"env.{col}"] = str(slurm[k])
    return row


def read_config(path: str | os.PathLike) -> dict:
    """A run's config (its config.json, else its config.yaml); ValueError if broken."""
    return _read_config_file(os.path.join(path, ""))


def _read_config_file(base: str) -> dict:
    """``<base>config.json`` as written by the run store, or ``<base>config.yaml`` for a folder without one."""
    try:
        data, name = _read_bytes(base + "config.json"), "config.json"
    except FileNotFoundError:
        data, name = _read_bytes(base + "config.yaml"), "config.yaml"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8: {e}") from None
    if name == "config.json":
        try:
            config = _loads(data)
        except json.JSONDecodeError as e:
            raise ValueError(f"config.json does not parse: {e}") from None
    else:
        try:
            config = yaml.load(text, Loader=_YamlLoader)
        except yaml.YAMLError as e:
            raise ValueError(f"config.yaml does not parse: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{name} holds a {type(config).__name__}, not a mapping")
    return config


def _read_done_run(path: str, selection: Selection, base: str | None = None):
    """(config, metrics dict, source dict, eval_step, applied rule) or raise ValueError with the reason.

    ``config`` is the nested config as read (flatten it with :func:`flatten_config`); ``base`` is ``path`` joined with
    "" (``os.path.join(path, "")``), given by a caller that has it already.
    """
    base = os.path.join(path, "") if base is None else base
    config = _read_config_file(base)
    try:
        data = _read_bytes(base + "metrics.json")
    except FileNotFoundError:
        raise ValueError("DONE but no metrics.json") from None
    try:
        metrics = _loads(data)
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
    return config, values, sources, step, rule


def _kinds(column: list) -> set[str]:
    """The kinds ("bool", "num", "str") of the non-null values of a column; type-level so 10k runs stay cheap."""
    return _kinds_of(set(map(type, column)))


def _kinds_of(types: set[type]) -> set[str]:
    kinds = set()
    for t in types:
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
    paths = find_run_paths(*roots)  # sorted str(run.path) of fourm.runs.find_runs, without a Path per run
    result = Collection(table=pd.DataFrame(), selection=selection, roots=[str(r) for r in roots])

    show = progress if progress is not None else len(paths) > 2000
    workers = min(os.cpu_count() or 1, 4) if len(paths) >= PARALLEL_FROM else 1
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        # parsing is Python-bound: split the folders over the cores (forked workers, so nothing is re-imported)
        step = -(-len(paths) // workers)
        chunks = [paths[i:i + step] for i in range(0, len(paths), step)]
        with multiprocessing.get_context("fork").Pool(len(chunks) - 1) as pool:
            pending = [pool.apply_async(_read_runs, (c, selection, False)) for c in chunks[1:]]
            parts = [_read_runs(chunks[0], selection, False)] + [p.get() for p in pending]  # this process reads one too
    else:
        parts = [_read_runs(paths, selection, show)]
    run_rows: list[dict] = []
    metric_run: list[int] = []
    metric_name: list[str] = []
    metric_value: list[float] = []
    metric_source: list[str] = []
    for rows, m_run, m_name, m_value, m_source, partial, corrupt, warnings, fallbacks in parts:
        offset = len(run_rows)
        run_rows += rows
        metric_run += [offset + i for i in m_run]
        metric_name += m_name
        metric_value += m_value
        metric_source += m_source
        result.partial += partial
        result.corrupt += corrupt
        result.warnings += warnings
        result.fallbacks += fallbacks
    result.done = len(run_rows)
    result.table = _build_table(run_rows, metric_run, metric_name, metric_value, metric_source)
    result.table.attrs.update({"select": str(selection), **result.counts})
    return result


def _read_runs(paths: list[str], selection: "Selection", show: bool):
    """Read the given run folders: per-run rows, the metric columns (run index, name, value, source), and the
    partial, corrupt, warning and fallback listings."""
    partial, corrupt, warnings, fallbacks = [], [], [], []
    # Build columns, not per-run frames: one DataFrame construction at the end is what makes 10k runs fast.
    run_rows: list[dict] = []
    metric_run: list[int] = []
    metric_name: list[str] = []
    metric_value: list[float] = []
    metric_source: list[str] = []
    for path in tqdm(paths, desc="collect", unit="run", disable=not show, mininterval=0.5):
        # plain strings and os calls: pathlib and file objects cost more than the reads at 10k runs
        base = path if path.endswith("/") else path + "/"  # os.path.join(path, "")
        try:
            os.stat(base + "DONE")
        except (OSError, ValueError):  # os.path.exists(...) is False
            partial.append(path)
            continue
        try:
            config, values, sources, step, rule = _read_done_run(path, selection, base)
        except (ValueError, OSError) as e:
            corrupt.append((path, str(e)))
            continue
        try:
            env = _read_env(path, base)
        except (ValueError, OSError) as e:  # env.json is provenance, not a result: keep the run, say so
            env = {}
            warnings.append(f"{path}: env.json unreadable ({e})")
        if rule.startswith("last(no"):
            fallbacks.append(path)
        index = len(run_rows)
        row = {"run_id": "" if path == "." else path.rpartition("/")[2],  # Path(path).name
               "eval_step": step, "select": rule, "path": path}
        flat = flatten_config(config)
        if _BASE_SET.isdisjoint(flat):
            row.update(flat)
        else:
            for k, v in flat.items():
                row[f"config.{k}" if k in BASE_COLUMNS else k] = v
        row.update(env)
        run_rows.append(row)
        metric_run.extend([index] * len(values))
        metric_name.extend(values)
        metric_value.extend(values.values())
        metric_source.extend(sources.values())  # same keys in the same order as values
    return run_rows, metric_run, metric_name, metric_value, metric_source, partial, corrupt, warnings, fallbacks


def _build_table(run_rows, metric_run, metric_name, metric_value, metric_source) -> pd.DataFrame:
    keys: dict[str, Any] = {}
    for row in run_rows:
        keys.update(row)  # only the keys matter
    fixed = ["run_id", "eval_step", "select", "path"]
    config_keys = sorted(k for k in keys if k not in fixed and not k.startswith("env."))
    env_keys = sorted(k for k in keys if k.startswith("env."))
    all_keys = fixed + config_keys + env_keys
    columns = _transpose(run_rows, all_keys)
    take = np.asarray(metric_run, dtype=np.intp)
    if run_rows:  # strings become pandas' string dtype once per run, then are repeated per metric row
        run_id, select, path = (pd.Series(columns[i]).array.take(take) for i in (0, 2, 3))
    else:
        run_id = select = path = np.asarray([], dtype=object)
    data: dict[str, Any] = {
        "run_id": run_id,
        "metric": metric_name,
        "value": np.asarray(metric_value, dtype=float),
        "source": metric_source,
        "eval_step": np.asarray(columns[1], dtype=float)[take],
        "select": select,
        "path": path,
    }
    for k, column in zip(config_keys + env_keys, columns[4:]):
        column = _harmonise(column)
        # take on the per-run values (10k), not on a Series of the rows: no index to build and re-align
        data[k] = pd.Series(column, dtype=_dtype_of(column)).array.take(take)
    return pd.DataFrame(data)


def _transpose(rows: list[dict], keys: list[str]) -> list[list]:
    """``[[r.get(k) for r in rows] for k in keys]``, gathered row-wise in C where a row has every key."""
    if not rows:
        return [[] for _ in keys]
    n = len(keys)
    get = operator.itemgetter(*keys)
    tuples = [get(r) if len(r) == n else tuple([r.get(k) for k in keys]) for r in rows]
    return [list(c) for c in zip(*tuples)]


def _dtype_of(column: list):
    types = set(map(type, column))
    kinds = _kinds_of(types)
    has_none = type(None) in types
    if kinds == {"num"}:
        if any(issubclass(t, float) for t in types):
            return float
        return "Int64" if has_none else "int64"  # nullable ints: a seed missing in one run stays an int
    if kinds == {"bool"} and not has_none:
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
