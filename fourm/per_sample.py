"""Per-sample results of an evaluation, beside ``metrics.json``, and bootstrap intervals over the test samples.

An evaluation writes ``per_sample.npz`` (arrays with one row per test sample: a 0/1 hit, a per-image error, per-class
intersections and unions) and ``per_sample.json``, which says how each metric is computed from those rows:

* ``{"kind": "mean", "values": a, "scale": s}``: ``s * mean(a)`` (top-1 from hits, delta1 or abs rel per image);
  with ``"where": m`` the mean over the rows where the boolean array ``m`` holds (a metric of some samples only);
* ``{"kind": "ratio", "num": a, "den": b, "scale": s}``: ``s * mean over classes of sum(a) / sum(b)`` with ``a``,
  ``b`` of shape ``[N, classes]`` (mIoU from per-image intersections and unions; classes never present are left out).

:func:`bootstrap` resamples the rows with replacement (seeded) and gives the 95% interval of a metric;
:func:`paired_bootstrap` resamples the same rows of two evaluations of the same samples (pretrained vs random init on
the same images) and gives the interval of the difference and how often it is not above zero.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fourm.files import atomic_write_bytes, atomic_write_json

ARRAYS = "per_sample.npz"
SPEC = "per_sample.json"
KINDS = ("mean", "ratio")


def write_per_sample(folder: str | os.PathLike, arrays: dict[str, np.ndarray], spec: dict[str, dict],
                     times: int = 1000, seed: int = 0) -> dict[str, float]:
    """Write a run's per-sample arrays and the metric spec (arrays first: the spec marks them complete); returns
    ``{"<metric>.ci95": half-width of its 95% bootstrap interval}`` for the run's ``metrics.json``."""
    import io

    rows = {len(np.asarray(a)) for a in arrays.values()}
    if len(rows) != 1:
        raise ValueError(f"per-sample arrays must have one row per sample; got lengths {sorted(rows)}")
    for metric, s in spec.items():
        if s.get("kind") not in KINDS:
            raise ValueError(f"per-sample metric {metric!r}: kind must be one of {KINDS}, got {s.get('kind')!r}")
        for field in (("values", "where") if "where" in s else ("values",)) if s["kind"] == "mean" else ("num", "den"):
            if s.get(field) not in arrays:
                raise ValueError(f"per-sample metric {metric!r}: {field}={s.get(field)!r} is not an array")
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(Path(folder) / ARRAYS, buf.getvalue())
    atomic_write_json(Path(folder) / SPEC, spec)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    out = {}
    for metric, s in spec.items():
        lo, hi = bootstrap(arrays, s, times, seed)
        out[f"{metric}.ci95"] = (hi - lo) / 2
    return out


def read_per_sample(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, spec) of a run folder, or None when it has no per-sample results."""
    folder = Path(folder)
    if not (folder / SPEC).exists() or not (folder / ARRAYS).exists():
        return None
    with np.load(folder / ARRAYS) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / SPEC).read_text())


def value(arrays: dict, spec: dict, rows: np.ndarray | None = None) -> float:
    """One metric from the per-sample arrays, over ``rows`` (indices, repeats allowed) or all samples."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    scale = float(spec.get("scale", 1.0))
    if spec["kind"] == "mean":
        v = pick(arrays[spec["values"]])
        if "where" in spec:
            v = v[pick(arrays[spec["where"]]).astype(bool)]
        return scale * float(np.mean(v)) if len(v) else float("nan")
    num, den = pick(arrays[spec["num"]]).sum(axis=0), pick(arrays[spec["den"]]).sum(axis=0)
    present = den > 0
    return scale * float(np.mean(num[present] / den[present])) if present.any() else float("nan")


def _resamples(n: int, times: int, seed: int):
    """``times`` seeded index resamples of ``n`` samples, one at a time (memory stays at one resample)."""
    rng = np.random.default_rng(seed)
    for _ in range(times):
        yield rng.integers(0, n, size=n)


def bootstrap(arrays: dict, spec: dict, times: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of a metric over ``times`` resamples of the test samples."""
    n = len(next(iter(arrays.values())))
    values = np.array([value(arrays, spec, rows) for rows in _resamples(n, times, seed)])
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def ci95(folder: str | os.PathLike, metric: str, times: int = 1000, seed: int = 0) -> float | None:
    """Half-width of the 95% bootstrap interval of ``metric`` of a run folder (None: no per-sample data for it)."""
    found = read_per_sample(folder)
    if found is None or metric not in found[1]:
        return None
    lo, hi = bootstrap(found[0], found[1][metric], times, seed)
    return (hi - lo) / 2


def paired_bootstrap(pairs, metric: str, times: int = 1000, seed: int = 0, higher_is_better: bool = True) -> dict:
    """Runs ``a`` against runs ``b`` on the same test samples, from ``pairs`` of run folders ``[(a, b), ...]`` (one pair
    per seed): the observed mean difference (a - b), its 95% interval, and ``p``, the fraction of resamples where
    ``a`` is not better. Every resample draws the same test samples for every run, so the interval is that of the
    test set's sampling, paired. Runs with different sample counts are refused."""
    found, n = [], None
    for a, b in pairs:
        fa, fb = read_per_sample(a), read_per_sample(b)
        if fa is None or fb is None or metric not in fa[1] or metric not in fb[1]:
            raise ValueError(f"paired bootstrap of {metric!r}: {a} or {b} has no per-sample results for it")
        for folder, f in ((a, fa), (b, fb)):
            rows = len(next(iter(f[0].values())))
            if n is not None and rows != n:
                raise ValueError(f"paired bootstrap of {metric!r}: {folder} has {rows} samples, others {n}; "
                                 "they must be scored on the same images")
            n = rows
        found.append((fa, fb))
    if not found:
        raise ValueError(f"paired bootstrap of {metric!r}: no pairs of runs")

    def diff(rows):
        return float(np.mean([value(fa[0], fa[1][metric], rows) - value(fb[0], fb[1][metric], rows) for fa, fb in found]))

    diffs = np.array([diff(rows) for rows in _resamples(n, times, seed)])
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    sign = 1.0 if higher_is_better else -1.0
    return {"diff": diff(None), "ci95": [float(lo), float(hi)], "p": float(np.mean(sign * diffs <= 0)),
            "samples": n, "pairs": len(found)}
