"""Tables from the long table of :mod:`results.collect`, written as markdown, LaTeX and CSV.

Layouts (``table(long_df, layout=...)``):

* ``transfer`` — the 4M paper's transfer table: published rows (``published/4m_transfer.csv``) plus one row per method of
  ours (label from the config's ``method``, else ``transfer.init``), columns IN1K top-1 / COCO AP box / COCO AP mask /
  ADE20K mIoU / NYUv2 δ1 in percent, seeds as "mean ± std", and a Δ row under every row of ours that matches a published
  (method, size).
* ``ablation`` — one row per grid point (the config keys that vary among runs of the same task), one column per task
  (a validation loss by default) and their average (optionally each task normalised by a reference row first); the best
  value of each column is bold.
* ``custom`` — a pivot: ``index`` keys x ``columns`` keys, cells "mean ± std" over the runs in each cell.

Metric lookup: a metric ``name`` of a run is, in order of preference, the selected eval's (``source="eval"``) before
the final one, then ``name`` itself, ``val/name``, ``val_name`` (what ``transfer`` writes: ``loss`` finds ``val_loss``),
``test/name``, ``coco/name`` (mmdet's prefix), and last any ``<prefix>/name`` other than ``train/name``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fourm.runs import atomic_write_text
from results.collect import BASE_COLUMNS, default_direction
from transfer.tasks import tasks

PUBLISHED_TRANSFER = Path(__file__).resolve().parent / "published" / "4m_transfer.csv"
LAYOUTS = ("transfer", "ablation", "custom", "oob")
TASK_KEY = "transfer.task"


@dataclasses.dataclass(frozen=True)
class MetricColumn:
    """A transfer-table column: where its number lives in our run store and how to turn it into percent."""

    key: str  # column of published/4m_transfer.csv
    header: str
    latex: str
    task: str  # value of transfer.task
    metric: str  # metric name in metrics.json
    scale: float  # run-store value x scale = percent


def transfer_columns() -> tuple[MetricColumn, ...]:
    """The paper-layout columns: every registered task's headline metrics that have a published column, in the
    published table's order (IN1K, COCO box, COCO mask, ADE20K, NYUv2)."""
    return tuple(MetricColumn(h.column, h.label, h.latex or h.label, t.name, h.metric, h.scale)
                 for t in tasks().values() for h in t.headline if h.column)


METHOD_KEYS = ("method", "transfer.method")
SIZE_KEYS = ("size", "model.size", "transfer.size", "model.name", "model.arch", "transfer.model", "transfer.encoder", "model")
_SIZE_TOKENS = {"pico": "P", "nano": "N", "n": "N", "micro": "Mi", "tiny": "T", "t": "T", "small": "S", "s": "S", "base": "B", "b": "B", "large": "L", "l": "L",
                "xlarge": "XL", "xl": "XL", "huge": "H", "h": "H"}
_LOCATOR_HINTS = ("init", "path", "dir", "ckpt", "checkpoint", "output", "root")


# --------------------------------------------------------------------------------------------------------------------
# cells and rendering


@dataclasses.dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False
    numeric: bool = False


@dataclasses.dataclass
class TableResult:
    """A rendered table: ``frame`` holds the numbers (what the CSV is), ``markdown``/``latex`` the paper layout."""

    layout: str
    frame: pd.DataFrame
    markdown: str
    latex: str
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def csv(self) -> str:
        return self.frame.to_csv(index=False)

    def write(self, out_dir: str | os.PathLike, name: str | None = None) -> dict[str, tuple[Path, str]]:
        """Write ``<name>.md``, ``.tex`` and ``.csv`` atomically; returns {kind: (path, "wrote"|"replaced"|"unchanged")}."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = name or f"table_{self.layout}"
        written = {}
        for kind, text in (("md", self.markdown), ("tex", self.latex), ("csv", self.csv)):
            path = out / f"{name}.{kind}"
            written[kind] = (path, write_if_changed(path, text))
        return written


def write_if_changed(path: Path, text: str) -> str:
    """Atomic write that says what happened to an existing file: "wrote", "replaced" or "unchanged"."""
    if path.exists():
        if path.read_text() == text:
            return "unchanged"
        atomic_write_text(path, text)
        return "replaced"
    atomic_write_text(path, text)
    return "wrote"


def _md_escape(s: str) -> str:
    return s.replace("|", r"\|")


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[Cell]], numeric: Sequence[bool]) -> str:
    """A GitHub markdown table; numeric columns right-aligned, bold cells as ``**x**``."""
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
    for row in rows:
        cells = [f"**{_md_escape(c.text)}**" if c.bold and c.text else _md_escape(c.text) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "δ": r"$\delta$", "→": r"$\rightarrow$", "−": "-", "–": "--"}


def latex_escape(s: str) -> str:
    """Escape LaTeX specials and map the few unicode symbols the tables use to math mode."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)
    for k, v in _LATEX_UNICODE.items():
        out = out.replace(k, v)
    return out


def render_latex(header: Sequence[str], rows: Sequence[Sequence[Cell]], numeric: Sequence[bool],
                 latex_header: Sequence[str] | None = None, rules_before: Iterable[int] = ()) -> str:
    """A booktabs ``tabular``; bold cells as ``\\textbf{}``; ``rules_before`` adds ``\\midrule`` before those rows."""
    spec = "".join("r" if n else "l" for n in numeric)
    head = latex_header or [latex_escape(h) for h in header]
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    rules = set(rules_before)
    for i, row in enumerate(rows):
        if i in rules and i:
            lines.append(r"\midrule")
        cells = [rf"\textbf{{{latex_escape(c.text)}}}" if c.bold and c.text else latex_escape(c.text) for c in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def format_number(x: float, decimals: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    s = f"{x:+.{decimals}f}" if sign else f"{x:.{decimals}f}"
    if float(s) == 0:  # no "-0.0"
        s = ("+" if sign else "") + s.lstrip("+-")
    return s


def format_mean_std(mean: float, std: float, n: int, decimals: int) -> str:
    """"84.1 ± 0.2" over n > 1 seeds, "84.1" for one, "–" for none."""
    if n == 0 or mean is None or math.isnan(mean):
        return "–"
    if n > 1 and not math.isnan(std):
        return f"{format_number(mean, decimals)} ± {format_number(std, decimals)}"
    return format_number(mean, decimals)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


# --------------------------------------------------------------------------------------------------------------------
# reading the long table


def filter_rows(df: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """Rows whose column ``key`` equals ``value`` (or is in a list of values) for every item; values may be strings."""
    if not where:
        return df
    mask = pd.Series(True, index=df.index)
    for key, want in where.items():
        if key not in df.columns:
            raise KeyError(f"where: no column {key!r} in the collected table; config columns are e.g. "
                           f"{', '.join(sorted(config_columns(df))[:12])}")
        wants = list(want) if isinstance(want, (list, tuple, set)) else [want]
        col = df[key]
        hit = pd.Series(False, index=df.index)
        for w in wants:
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                try:
                    hit |= np.isclose(col.astype(float), float(w), rtol=0, atol=1e-12)
                    continue
                except (TypeError, ValueError):
                    pass
            if pd.api.types.is_bool_dtype(col):  # --where flag=true must match True
                hit |= col.astype(str).str.lower() == str(w).lower()
            else:
                hit |= col.astype(str) == str(w)
        mask &= hit
    return df[mask]


def config_columns(df: pd.DataFrame) -> list[str]:
    """The config columns of a long table (everything but the base columns and env.*)."""
    return [c for c in df.columns if c not in BASE_COLUMNS and not c.startswith("env.")]


def lookup_metric(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """One row per run holding metric ``name`` (see the module docstring for the preference order)."""
    if df.empty:
        return df
    metric = df["metric"].astype(str)
    preferred = [name, f"val/{name}", f"val_{name}", f"test/{name}", f"coco/{name}"]
    rank = pd.Series(np.inf, index=df.index)
    for i, cand in enumerate(reversed(preferred)):
        rank[metric == cand] = len(preferred) - 1 - i
    loose = metric.str.endswith("/" + name) & ~metric.str.startswith("train/") & np.isinf(rank)
    rank[loose] = len(preferred)
    if "source" in df.columns:
        rank = rank + np.where(df["source"].astype(str) == "eval", 0, 10)
    hits = df[np.isfinite(rank)].assign(_rank=rank[np.isfinite(rank)])
    if hits.empty:
        return hits.drop(columns="_rank")
    hits = hits.sort_values(["run_id", "_rank"], kind="stable")
    best = hits.groupby("run_id", sort=False)["_rank"].transform("min")
    top = hits[hits["_rank"] == best]
    dup = top[top.duplicated("run_id", keep=False)]
    if not dup.empty:
        rid = dup["run_id"].iloc[0]
        names = sorted(dup.loc[dup["run_id"] == rid, "metric"].astype(str))
        raise ValueError(f"metric {name!r} is ambiguous in run {rid}: {names}; name one of them exactly")
    return top.drop(columns="_rank")


def _is_seed(key: str) -> bool:
    return key == "seed" or key.endswith(".seed") or key.endswith("_seed")


def _is_bookkeeping(key: str) -> bool:
    return any(part.startswith("_") for part in key.split("."))


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def value_text(v: Any) -> str:
    """A config value as a table shows it: integers without .0, JSON lists as a+b, long paths as their last two parts."""
    if _blank(v):
        return "–"
    s = str(v)
    if s.startswith("[") and s.endswith("]"):  # compact JSON list from collect: show as a+b+c
        s = "+".join(x.strip().strip('"') for x in s[1:-1].split(",") if x.strip())
    elif "/" in s and len(s) > 24:  # a path: its last two parts say which run/checkpoint
        s = "/".join(Path(s).parts[-2:])
    return s


def _sort_key(v: Any):
    if _blank(v):
        return (2, 0.0, "")
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def runs_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its config (and path), without the metric columns."""
    cols = ["run_id", "path", *config_columns(df)]
    return df[[c for c in cols if c in df.columns]].drop_duplicates("run_id").reset_index(drop=True)


def varying_keys(runs: pd.DataFrame, group_key: str | None, exclude: Iterable[str] = ()) -> list[str]:
    """Config keys that take more than one value among runs of the same group (task); seeds and ``_`` keys excluded."""
    exclude = set(exclude) | {"run_id", "path"}
    if group_key:
        exclude.add(group_key)
    keys = []
    groups = [g for _, g in runs.groupby(group_key, dropna=False)] if group_key and group_key in runs else [runs]
    for c in runs.columns:
        if c in exclude or _is_seed(c) or _is_bookkeeping(c):
            continue
        if any(g[c].map(value_text).nunique() > 1 for g in groups):
            keys.append(c)
    return keys


def _drop_redundant_locators(runs: pd.DataFrame, keys: list[str], group_key: str | None) -> list[str]:
    """Drop path-like keys (e.g. ``transfer.init``) that other grid keys already determine: they only add noise."""
    keys = list(keys)
    groups = [g for _, g in runs.groupby(group_key, dropna=False)] if group_key and group_key in runs else [runs]
    for k in [k for k in keys if any(h in k.lower() for h in _LOCATOR_HINTS)]:
        rest = [x for x in keys if x != k]
        if not rest:
            continue
        texts = lambda g, cols: g[cols].map(value_text).drop_duplicates()  # noqa: E731
        if all(len(texts(g, rest)) == len(texts(g, rest + [k])) for g in groups):
            keys.remove(k)
    return keys


# --------------------------------------------------------------------------------------------------------------------
# transfer layout


def published_transfer(path: str | os.PathLike = PUBLISHED_TRANSFER) -> pd.DataFrame:
    """The published table (method, size, one column per :func:`transfer_columns` key), in file order."""
    df = pd.read_csv(path, dtype={"method": str, "size": str})
    missing = [c for c in ("method", "size", *(c.key for c in transfer_columns())) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected method,size,{','.join(c.key for c in transfer_columns())}")
    return df


def split_size(label: str) -> tuple[str, str | None]:
    """``"4M-B (RGB→RGB only)"`` -> ``("4M (RGB→RGB only)", "B")``; a label without a size suffix is returned as is."""
    m = re.match(r"^(.*?)[-\s](N|T|S|B|L|XL|H)\b(.*)$", label.strip())
    if not m:
        return label.strip(), None
    return (m.group(1) + m.group(3)).strip(), m.group(2)


def size_from_name(name: Any) -> str | None:
    """Model size letter from a name such as ``fm_base_12e_12d``, ``vit_large_patch16``, ``4M-B`` or ``B``."""
    if _blank(name):
        return None
    for tok in re.split(r"[_\-\s@/.]+", str(name).lower()):
        m = re.match(r"^(pico|nano|micro|tiny|small|base|large|xlarge|huge|xl|n|t|s|b|l|h)\d*$", tok)
        if m:
            return _SIZE_TOKENS[m.group(1)]
    return None


def _norm(s: str) -> str:
    return re.sub(r"[\s\-_]+", "", s.lower())


def _our_label(run: Mapping[str, Any], method_key: str | None) -> str:
    """The row label of a run: its method (or init), with its transfer protocol when it is not fine-tuning (a
    linear probe is not the published fine-tuned number: its row gets no Δ row)."""
    label = _method_label(run, method_key)
    protocol = run.get("transfer.protocol")
    return label if _blank(protocol) or protocol == "finetune" else f"{label}, {protocol}"


def _method_label(run: Mapping[str, Any], method_key: str | None) -> str:
    keys = [method_key] if method_key else list(METHOD_KEYS)
    for k in keys:
        if k in run and not _blank(run[k]):
            return str(run[k])
    init = run.get("transfer.init")
    if _blank(init):
        return "ours"
    init = str(init)
    if init == "random":
        return "random init"
    p = Path(init)
    parent = p.parent.name
    # a checkpoint inside a run folder is best named by the run id
    return f"init {parent}" if re.fullmatch(r"[0-9a-f]{12}", parent) else f"init {p.stem or p.name}"


def _our_size(run: Mapping[str, Any], size_key: str | None) -> str | None:
    for k in ([size_key] if size_key else list(SIZE_KEYS)):
        if k in run:
            s = size_from_name(run[k])
            if s:
                return s
    return None


def transfer_table(long_df: pd.DataFrame | None = None, *, published: str | os.PathLike | pd.DataFrame | None = PUBLISHED_TRANSFER,
                   where: Mapping[str, Any] | None = None, method_key: str | None = None, size_key: str | None = None,
                   columns: Sequence[MetricColumn] | None = None, decimals: int = 1,
                   ignore_keys: Iterable[str] = ()) -> TableResult:
    """The paper's transfer table: published rows, then ours (mean ± std over seeds) each followed by its Δ row."""
    columns = transfer_columns() if columns is None else columns
    notes: list[str] = []
    pub = published if isinstance(published, pd.DataFrame) else (published_transfer(published) if published else None)
    records: list[dict] = []
    if pub is not None:
        for _, p in pub.iterrows():
            rec = {"kind": "published", "method": p["method"], "size": p["size"]}
            for c in columns:
                rec[c.key], rec[f"{c.key}_std"], rec[f"{c.key}_n"] = float(p[c.key]), math.nan, 1
            records.append(rec)
    ours = _transfer_ours(long_df, where, method_key, size_key, columns, ignore_keys, notes) if long_df is not None else []
    lookup = {}
    if pub is not None:
        for i, p in pub.iterrows():
            lookup[(_norm(p["method"]), str(p["size"]))] = i
    for rec in ours:
        records.append(rec)
        m, s = split_size(rec["method"])  # a label like "4M-B" names its size; otherwise the config's size
        if s is None:
            m, s = rec["method"], rec["size"]
        match = lookup.get((_norm(m), s)) if s else None
        if match is not None:
            p = pub.loc[match]
            delta = {"kind": "delta", "method": f"Δ vs published {p['method']}", "size": p["size"]}
            for c in columns:
                delta[c.key] = rec[c.key] - float(p[c.key])
                delta[f"{c.key}_std"], delta[f"{c.key}_n"] = math.nan, rec[f"{c.key}_n"]
            records.append(delta)
    frame = pd.DataFrame.from_records(records, columns=["kind", "method", "size", *[f"{c.key}{s}" for c in columns
                                                                                for s in ("", "_std", "_n", "_ci95")]])
    header = ["Method", "Size", *[c.header for c in columns]]
    rows: list[list[Cell]] = []
    for rec in records:
        kind = rec["kind"]
        label = rec["method"] + (" (ours)" if kind == "ours" else "")
        row = [Cell(label), Cell(rec["size"] or "–")]
        for c in columns:
            if kind == "delta":
                text = format_number(rec[c.key], decimals, sign=True)
            else:
                text = format_mean_std(rec[c.key], rec[f"{c.key}_std"], rec[f"{c.key}_n"], decimals)
                ci = rec.get(f"{c.key}_ci95", math.nan)
                if kind == "ours" and not math.isnan(ci) and text != "–":
                    text += f" [CI ±{format_number(ci, decimals)}]"
            row.append(Cell(text, numeric=True))
        rows.append(row)
    numeric = [False, False] + [True] * len(columns)
    # rules like the paper's: between size groups of the published rows, and before our rows
    n_pub = 0 if pub is None else len(pub)
    rules = [i for i in range(1, n_pub) if records[i]["size"] != records[i - 1]["size"]] + ([n_pub] if ours else [])
    latex_header = ["Method", "Size", *[c.latex for c in columns]]
    return TableResult(
        layout="transfer",
        frame=frame,
        markdown=render_markdown(header, rows, numeric),
        latex=render_latex(header, rows, numeric, latex_header, rules_before=rules),
        notes=notes,
    )


def _transfer_ours(long_df, where, method_key, size_key, columns, ignore_keys, notes) -> list[dict]:
    df = filter_rows(long_df, where)
    if df.empty or TASK_KEY not in df.columns:
        if not df.empty:
            notes.append(f"no {TASK_KEY} column: the collected runs are not transfer runs; showing published rows only")
        return []
    tasks = {c.task for c in columns}
    other = sorted(set(df[TASK_KEY].dropna().astype(str)) - tasks)
    if other:
        notes.append(f"runs of tasks outside this layout were left out: {', '.join(other)}")
    df = df[df[TASK_KEY].astype(str).isin(tasks)]
    if df.empty:
        return []
    runs = runs_frame(df)
    run_records = runs.to_dict("records")  # per-column types survive (iterrows would turn ints into floats)
    runs["_label"] = [_our_label(r, method_key) for r in run_records]
    runs["_size"] = [_our_size(r, size_key) for r in run_records]
    label_of = dict(zip(runs["run_id"], zip(runs["_label"], runs["_size"])))
    # seeds of one config aggregate; anything else differing inside a (label, size, task) cell is a labelling error
    ignore = set(ignore_keys) | set(METHOD_KEYS) | {"_label", "_size"}
    for (label, size, task), g in runs.groupby(["_label", "_size", TASK_KEY], dropna=False):
        diff = varying_keys(g.drop(columns=["_label", "_size"]), None, exclude=ignore)
        if diff:
            values = {k: sorted(set(g[k].map(value_text)))[:3] for k in diff[:3]}
            raise ValueError(
                f"transfer table: runs labelled {label!r} (size {size}) on {task} differ beyond the seed in {values}; "
                f"give them distinct `method` values in their configs (e.g. method=...), or keep one with --where KEY=VALUE"
            )
    out: dict[tuple, dict] = {}
    for c in columns:
        task_df = df[df[TASK_KEY].astype(str) == c.task]
        vals = lookup_metric(task_df, c.metric)
        if vals.empty:
            continue
        _check_scale(c, vals, notes)
        for rid, v in zip(vals["run_id"], vals["value"]):
            out.setdefault(label_of[rid], {}).setdefault(c.key, []).append(v * c.scale)
        cis = lookup_metric(task_df, f"{c.metric}.ci95")
        for rid, v in zip(cis["run_id"], cis["value"]):
            out.setdefault(label_of[rid], {}).setdefault(f"{c.key}_ci95", []).append(v * c.scale)
    records = []
    for label, size in sorted(out, key=lambda k: (k[0], k[1] or "")):
        rec = {"kind": "ours", "method": label, "size": size}
        for c in columns:
            rec[c.key], rec[f"{c.key}_std"], rec[f"{c.key}_n"] = mean_std(out[(label, size)].get(c.key, []))
            ci = out[(label, size)].get(f"{c.key}_ci95")
            rec[f"{c.key}_ci95"] = float(np.mean(ci)) if ci else math.nan
        records.append(rec)
    if any(not math.isnan(r[f"{c.key}_ci95"]) for r in records for c in columns):
        notes.append("[CI ±x]: half-width of the 95% bootstrap interval over the test images (mean over seeds)")
    return records


def _check_scale(c: MetricColumn, vals: pd.DataFrame, notes: list[str]) -> None:
    v = vals["value"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    if c.scale == 100.0 and (v > 1.0).any():
        path = vals["path"].iloc[int(np.argmax(vals["value"].to_numpy(dtype=float) > 1.0))] if "path" in vals else "?"
        raise ValueError(
            f"{c.task} {c.metric} = {v.max():g} in {path}: this metric is stored as a fraction in [0, 1] "
            f"(mmdet/our depth metrics) and shown x100; write fractions in metrics.json"
        )
    if c.scale == 1.0 and (v <= 1.0).all() and (v > 0).any():
        msg = f"{c.task} {c.metric}: every value is <= 1 — it is read as percent; if the runs stored fractions the column is 100x too small"
        notes.append(msg)
        warnings.warn(msg, stacklevel=3)


# --------------------------------------------------------------------------------------------------------------------
# ablation layout


def _differs_within(runs: pd.DataFrame, keys: Sequence[str], column: str) -> bool:
    """Whether some group of runs with equal ``keys`` holds more than one value of ``column``."""
    values: dict[tuple, set] = {}
    for row in runs[[*keys, column]].astype(str).itertuples(index=False):
        values.setdefault(tuple(row[:-1]), set()).add(row[-1])
    return any(len(v) > 1 for v in values.values())


def ablation_frame(long_df: pd.DataFrame, *, metric: str | Mapping[str, str] = "loss", tasks: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None, reference: Mapping[str, Any] | str | None = None,
                   where: Mapping[str, Any] | None = None, exclude: Iterable[str] = (),
                   task_key: str = TASK_KEY) -> tuple[pd.DataFrame, list[str], list[str], dict]:
    """Numbers of the ablation table: (frame, grid keys, task columns, info).

    ``frame`` has one row per grid point with ``<task>``, ``<task>_std``, ``<task>_n`` and ``avg``, ``avg_std``, ``avg_n``
    (avg over tasks per seed, then mean ± std over seeds whose runs cover every task).
    """
    df = filter_rows(long_df, where)
    if df.empty:
        raise ValueError("ablation table: no runs (after --where); collect some finished runs first")
    has_tasks = task_key in df.columns and df[task_key].notna().any()
    if not has_tasks:
        df = df.assign(**{task_key: metric if isinstance(metric, str) else "value"})
    all_tasks = sorted(set(df[task_key].dropna().astype(str)))
    tasks = list(tasks) if tasks else all_tasks
    unknown = sorted(set(tasks) - set(all_tasks))
    if unknown:
        raise ValueError(f"ablation table: no runs for task(s) {unknown}; tasks present: {all_tasks}")
    df = df[df[task_key].astype(str).isin(tasks)]
    per_task = {t: (metric.get(t) if isinstance(metric, Mapping) else metric) for t in tasks}
    missing = [t for t, m in per_task.items() if not m]
    if missing:
        raise ValueError(f"ablation table: no metric given for task(s) {missing} in the metric mapping")
    runs = runs_frame(df)
    auto = _drop_redundant_locators(runs, varying_keys(runs, task_key, exclude), task_key)
    if keys is None:
        keys = auto
    else:
        keys = list(keys)
        absent = [k for k in keys if k not in runs.columns]
        if absent:
            raise KeyError(f"grid key(s) {absent} are not config columns; keys that vary: {auto}")
        # averaging over a key nobody asked to average over would hide a difference: refuse it. A key that only
        # co-varies with the grid keys (one value per point, e.g. a per-model-size LR) hides nothing.
        mixed = [k for k in _drop_redundant_locators(runs, [*keys, *[a for a in auto if a not in keys]], task_key)
                 if k not in keys and _differs_within(runs, keys, k)]
        if mixed:
            raise ValueError(f"runs at the same {keys} differ in {mixed}; add them to the grid keys (--series / --keys) "
                             f"or pick one value with --where KEY=VALUE (or exclude=...)")
    seed_cols = [c for c in runs.columns if _is_seed(c)]
    point_of = {}
    points: dict[tuple, dict] = {}
    for r in runs.to_dict("records"):
        point = tuple(r[k] if not _blank(r[k]) else None for k in keys)
        point_key = tuple(value_text(v) for v in point)
        points.setdefault(point_key, dict(zip(keys, point)))
        seed = tuple(value_text(r[c]) for c in seed_cols)
        point_of[r["run_id"]] = (point_key, seed)
    values: dict[tuple, dict[str, dict[tuple, list[float]]]] = {}
    notes = []
    for t in list(tasks):
        vals = lookup_metric(df[df[task_key].astype(str) == t], per_task[t])
        if vals.empty:  # e.g. coco has no validation loss: a column of dashes would also blank every avg
            tasks.remove(t)
            notes.append(f"{t} left out: none of its runs reports {per_task.pop(t)!r} (pick one with --metric {t}=NAME)")
            continue
        for rid, v in zip(vals["run_id"], vals["value"]):
            pk, seed = point_of[rid]
            values.setdefault(pk, {}).setdefault(t, {}).setdefault(seed, []).append(float(v))
    if not tasks:
        raise ValueError(f"ablation table: no run reports the metric {metric!r}; metrics present include "
                         f"{sorted(set(df['metric'].astype(str)))[:10]}")
    directions = {default_direction(m) for m in per_task.values()}
    with_avg = len(directions) == 1
    info = {"metric": per_task, "direction": {t: default_direction(m) for t, m in per_task.items()},
            "avg": with_avg, "reference": None, "notes": notes}
    if not with_avg and len(tasks) > 1:
        info["notes"].append("no avg column: the per-task metrics point in different directions (min vs max)")
    order = sorted(points, key=lambda pk: [_sort_key(points[pk][k]) for k in keys])
    records = []
    for pk in order:
        rec = dict(points[pk])
        cell = values.get(pk, {})
        for t in tasks:
            rec[t], rec[f"{t}_std"], rec[f"{t}_n"] = mean_std(v for vs in cell.get(t, {}).values() for v in vs)
        records.append(rec)
    frame = pd.DataFrame.from_records(records, columns=[*keys, *[f"{t}{s}" for t in tasks for s in ("", "_std", "_n")]])
    if with_avg:
        ref = None
        if reference is not None:
            ref = _reference_row(frame, keys, reference)
            info["reference"] = {k: frame.loc[ref, k] for k in keys}
        denom = {t: (frame.loc[ref, t] if ref is not None else 1.0) for t in tasks}
        avg, avg_std, avg_n = [], [], []
        for pk, rec in zip(order, frame.to_dict("records")):
            task_means = [rec[t] / denom[t] for t in tasks]
            avg.append(float(np.mean(task_means)) if all(math.isfinite(x) for x in task_means) else math.nan)
            # per-seed averages over seeds that ran every task: the spread the avg column's ± shows
            cell = values.get(pk, {})
            common = set.intersection(*(set(cell.get(t, {})) for t in tasks)) if cell else set()
            per_seed = [np.mean([np.mean(cell[t][s]) / denom[t] for t in tasks]) for s in common]
            _, sd, n = mean_std(per_seed)
            avg_std.append(sd)
            avg_n.append(n)
        frame["avg"], frame["avg_std"], frame["avg_n"] = avg, avg_std, avg_n
    return frame, list(keys), tasks, info


def _parse_reference(reference: Mapping[str, Any] | str) -> dict[str, str]:
    if isinstance(reference, Mapping):
        return {k: str(v) for k, v in reference.items()}
    out = {}
    for item in str(reference).split(","):
        if "=" not in item:
            raise ValueError(f"reference {reference!r}: expected KEY=VALUE[,KEY=VALUE...]")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _reference_row(frame: pd.DataFrame, keys: list[str], reference) -> int:
    ref = _parse_reference(reference)
    bad = [k for k in ref if k not in keys]
    if bad:
        raise KeyError(f"reference key(s) {bad} are not grid keys of this ablation; grid keys: {keys}")
    mask = pd.Series(True, index=frame.index)
    for k, v in ref.items():
        mask &= frame[k].map(value_text) == value_text(_coerce_like(frame[k], v))
    hits = list(frame.index[mask])
    if len(hits) != 1:
        rows = [", ".join(f"{k}={value_text(r[k])}" for k in keys) for r in frame.to_dict("records")]
        raise ValueError(f"reference {ref} matches {len(hits)} grid rows (need exactly 1); rows: {rows}")
    return hits[0]


def _coerce_like(col: pd.Series, v: str):
    if pd.api.types.is_numeric_dtype(col):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _best_mask(values: pd.Series, direction: str, decimals: int) -> pd.Series:
    """Rows whose value, rounded as displayed, is the best of the column (ties all marked)."""
    r = values.round(decimals)
    if r.notna().sum() < 2:
        return pd.Series(False, index=values.index)
    best = r.min() if direction == "min" else r.max()
    return r == best


def ablation_table(long_df: pd.DataFrame, *, metric: str | Mapping[str, str] = "loss", decimals: int = 3,
                   **kwargs) -> TableResult:
    """One row per grid point, one column per task plus ``avg``; the best value of each column is bold."""
    frame, keys, tasks, info = ablation_frame(long_df, metric=metric, **kwargs)
    show_avg = info["avg"] and len(tasks) > 1
    value_cols = list(tasks) + (["avg"] if show_avg else [])
    direction = dict(info["direction"])
    if show_avg:
        direction["avg"] = next(iter(set(info["direction"].values())))
    best = {c: _best_mask(frame[c], direction[c], decimals) for c in value_cols}
    per_task = info["metric"]
    task_header = {t: (t if len(set(per_task.values())) == 1 else f"{t} {per_task[t]}") for t in tasks}
    avg_header = "avg (rel. to ref)" if info["reference"] else "avg"
    header = [*(keys or ["runs"]), *[task_header[t] for t in tasks], *([avg_header] if show_avg else [])]
    rows = []
    for i, rec in zip(frame.index, frame.to_dict("records")):
        row = [Cell(value_text(rec[k])) for k in keys] or [Cell("all")]
        for c in value_cols:
            row.append(Cell(format_mean_std(rec[c], rec[f"{c}_std"], int(rec[f"{c}_n"]), decimals),
                            bold=bool(best[c][i]), numeric=True))
        rows.append(row)
    numeric = [False] * max(len(keys), 1) + [True] * len(value_cols)
    notes = list(info["notes"])
    metric_desc = ", ".join(sorted({f"{m} ({default_direction(m)})" for m in per_task.values()}))
    notes.append(f"cells: {metric_desc}, mean ± std over seeds; bold = best per column")
    if info["reference"]:
        notes.append(f"avg: mean over tasks of value / reference value, reference {info['reference']}")
    return TableResult("ablation", frame, render_markdown(header, rows, numeric), render_latex(header, rows, numeric), notes)


# --------------------------------------------------------------------------------------------------------------------
# custom layout


def custom_table(long_df: pd.DataFrame, *, index: Sequence[str], columns: Sequence[str] = ("metric",),
                 values: str = "value", metrics: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
                 decimals: int = 2) -> TableResult:
    """Pivot of ``values`` by ``index`` x ``columns`` keys, cells "mean ± std" over the runs falling in each cell."""
    df = filter_rows(long_df, where)
    if metrics:
        df = df[df["metric"].astype(str).isin(metrics)]
    index, columns = list(index), list(columns)
    for k in [*index, *columns, values]:
        if k not in df.columns:
            raise KeyError(f"custom table: no column {k!r}; columns are {', '.join(df.columns)}")
    if df.empty:
        raise ValueError("custom table: no rows (check --where and --metrics)")
    keyed = df[[*index, *columns, values]].copy()
    for k in index + columns:
        keyed[k] = keyed[k].map(value_text)
    stats = keyed.groupby(index + columns, sort=False)[values].agg(
        mean="mean", std=lambda s: s.std(ddof=1) if s.count() > 1 else math.nan, n="count").reset_index()
    col_labels = sorted({tuple(r) for r in stats[columns].itertuples(index=False)}, key=lambda t: [_sort_key(x) for x in t])
    row_labels = sorted({tuple(r) for r in stats[index].itertuples(index=False)}, key=lambda t: [_sort_key(x) for x in t])
    lookup = {tuple(r[:len(index) + len(columns)]): r[len(index) + len(columns):]
              for r in stats[[*index, *columns, "mean", "std", "n"]].itertuples(index=False)}
    header = [*index, *[" / ".join(c) for c in col_labels]]
    rows, records = [], []
    for rl in row_labels:
        row = [Cell(x) for x in rl]
        rec = dict(zip(index, rl))
        for cl in col_labels:
            mean, std, n = lookup.get(rl + cl, (math.nan, math.nan, 0))
            name = " / ".join(cl)
            rec[name], rec[f"{name}_std"], rec[f"{name}_n"] = mean, std, n
            row.append(Cell(format_mean_std(mean, std, int(n), decimals), numeric=True))
        rows.append(row)
        records.append(rec)
    numeric = [False] * len(index) + [True] * len(col_labels)
    frame = pd.DataFrame.from_records(records)
    return TableResult("custom", frame, render_markdown(header, rows, numeric), render_latex(header, rows, numeric))


# --------------------------------------------------------------------------------------------------------------------

# (task prefix, metric, label, direction) of the out-of-the-box benchmark (fourm.generation.oob), in row order
OOB_ROWS = [
    ("depth", "delta1", "RGB → depth δ1 (median-scaled)", "max"), ("depth", "abs_rel", "RGB → depth abs rel", "min"),
    ("normal", "angle_mean", "RGB → normals mean angle (°)", "min"),
    ("normal", "angle_median", "RGB → normals median angle (°)", "min"),
    ("normal", "within_11deg", "RGB → normals % within 11.25°", "max"),
    ("semseg", "miou", "RGB → semseg mIoU", "max"), ("det", "ap", "RGB → det box AP", "max"),
    ("caption", "bleu4", "RGB → caption BLEU-4", "max"),
    ("retrieval", "recall@1", "caption → image retrieval R@1 (CLIP tokens)", "max"),
    ("retrieval", "recall@5", "caption → image retrieval R@5 (CLIP tokens)", "max"),
    *[(f"retrieval_{emb}_from_{src}", f"recall@{k}", f"{q} → image retrieval R@{k} ({name} global tokens)", "max")
      for emb, name in (("dinov2_global", "DINOv2"), ("imagebind_global", "ImageBind"))
      for src, q in (("rgb", "RGB"), ("caption", "caption")) for k in (1, 5)],
]


def oob_table(long_df: pd.DataFrame, *, method_key: str = "method", decimals: int = 1) -> TableResult:
    """The out-of-the-box table: per method and task metric, the generated value, the tokenizer's ceiling and the
    trivial baseline (runs with ``task: oob``; several runs of a method give mean ± std)."""
    if long_df is None or long_df.empty or "task" not in long_df.columns:
        raise ValueError("no out-of-the-box runs (task: oob) in the collection; make them with `fourm-bench oob`")
    df = long_df[long_df["task"] == "oob"]
    if df.empty:
        raise ValueError("no out-of-the-box runs (task: oob) in the collection; make them with `fourm-bench oob`")
    header = ["method", "task", "generated", "tokenizer ceiling", "trivial baseline"]
    rows, records = [], []
    for method, g in df.groupby(method_key if method_key in df.columns else "run_id", sort=True):
        for task, metric, label, direction in OOB_ROWS:
            vals = {sfx: g.loc[g["metric"] == f"{task}/{metric}{sfx}", "value"].astype(float) for sfx in ("", ".ceiling", ".baseline")}
            if vals[""].empty:
                continue
            stats = {sfx: mean_std(v) for sfx, v in vals.items()}
            gen, base = stats[""][0], stats[".baseline"][0]
            d = 3 if metric == "abs_rel" else decimals
            # compared as shown: chance computed two ways (5/96 and 100 * 5 / 96) must not read as a win
            shown_gen, shown_base = round(gen, d), round(base, d)
            beats = (shown_gen > shown_base) if direction == "max" else (shown_gen < shown_base)
            rows.append([Cell(str(method)), Cell(label)] + [Cell(format_mean_std(*stats[sfx], d), bold=(sfx == "" and beats))
                                                            for sfx in ("", ".ceiling", ".baseline")])
            records.append({"method": method, "task": label, "metric": f"{task}/{metric}", "generated": gen,
                            "ceiling": stats[".ceiling"][0], "baseline": base, "beats_baseline": bool(beats)})
    numeric = [False, False, True, True, True]
    md = render_markdown(header, rows, numeric) + "\nBold: the generation beats the trivial baseline.\n"
    return TableResult("oob", pd.DataFrame(records), md, render_latex(header, rows, numeric))


def table(long_df: pd.DataFrame | None, layout: str = "transfer", out: str | os.PathLike | None = None,
          name: str | None = None, **kwargs) -> TableResult:
    """Build a table in ``layout`` (transfer | ablation | custom) and, with ``out``, write its .md/.tex/.csv there."""
    if layout == "transfer":
        result = transfer_table(long_df, **kwargs)
    elif layout == "ablation":
        result = ablation_table(long_df, **kwargs)
    elif layout == "custom":
        result = custom_table(long_df, **kwargs)
    elif layout == "oob":
        result = oob_table(long_df, **kwargs)
    else:
        raise ValueError(f"unknown table layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if out is not None:
        result.write(out, name)
    return result
