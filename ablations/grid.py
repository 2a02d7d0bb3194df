"""Ablation grids: a YAML spec -> the list of grid points (hydra overrides), before any config is resolved.

A grid file (``ablations/grids/<name>.yaml``, or any path)::

    name: alphas
    kind: pretrain                 # pretrain (default): pretrain each point, then evaluate; transfer: evaluate only
    params: {data_root: ???}       # referenced as ${params.NAME}; set with --set params.NAME=VALUE
    base: [model=base, budget=paper]          # overrides on every point (pretrain config, or transfer config)
    evaluate:                                 # transfer evaluations of every point
      profile: paper
      tasks: [in1k, ade20k]
      seeds: [0]
      overrides: [data_root=${params.data_root}]
    grid:                                     # axes composed with product / zip (nest freely)
      product:
        - {axis: alphas, key: alphas.spec, values: [mod7_all2all_a0.1, mod7_all2all_a0.5]}
        - zip:
            - {axis: input_tokens, key: budget.num_input_tokens, values: [64, 128]}
            - {axis: target_tokens, key: budget.num_target_tokens, values: [64, 128]}

An axis's ``values`` is a list (with ``key``), or a mapping label -> value (with ``key``), label -> {key: value, ...}
or label -> [override strings]. Restrict a grid with ``only.AXIS=label1,label2``; other ``--set`` keys are described
in :func:`apply_sets`.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GRIDS_DIR = Path(__file__).with_name("grids")
KINDS = ("pretrain", "transfer")
_TOP_KEYS = {"name", "description", "kind", "params", "base", "evaluate", "grid"}
_EVAL_KEYS = {"profile", "tasks", "seeds", "protocols", "overrides"}
_PARAM = re.compile(r"\$\{params\.([A-Za-z0-9_.-]+)\}")
_PLAIN = re.compile(r"^[A-Za-z0-9_@./:+\-*%$?]+$")  # hydra accepts these characters unquoted


class GridError(ValueError):
    """A grid spec, override or point that cannot be used; the message names the grid, the point and the key."""


@dataclass(frozen=True)
class Point:
    """One grid point: its axis labels and the overrides it adds (ordered key -> hydra value string)."""

    labels: tuple[tuple[str, str], ...]
    overrides: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return ",".join(f"{a}={v}" for a, v in self.labels) or "base"


@dataclass
class Grid:
    name: str
    source: str
    kind: str = "pretrain"
    description: str = ""
    params: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)  # key -> python value or Raw override text
    profile: str = "paper"
    tasks: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])
    protocols: list = field(default_factory=list)  # transfer.protocol values to evaluate each point with ([]: the recipe's)
    eval_overrides: dict = field(default_factory=dict)
    tree: Any = None
    only: dict = field(default_factory=dict)  # axis -> allowed labels
    forced: dict = field(default_factory=dict)  # --set overrides, win over every point

    def where(self, point: Point | None = None) -> str:
        return f"grid {self.name!r} ({self.source})" + (f", point {point.name}" if point else "")


# --- overrides ---------------------------------------------------------------------------------------------------
class Raw(str):
    """Override text given as ``KEY=VALUE`` (already in hydra's grammar): used as is."""


def hydra_value(value: Any) -> str:
    """A python value as hydra override text (strings quoted when hydra would parse them otherwise)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.match(text) and text not in ("true", "false", "null") and not _looks_numeric(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def split_override(text: str, where: str) -> tuple[str, str]:
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise GridError(f"{where}: override {text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _override_dict(items, where: str) -> dict:
    """Overrides given as a list of 'k=v' strings (kept as :class:`Raw` text) or a mapping k -> python value."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return {str(k): v for k, v in items.items()}
    if isinstance(items, (list, tuple)):
        return {k: Raw(v) for k, v in (split_override(s, where) for s in items)}
    raise GridError(f"{where}: expected a list of KEY=VALUE overrides or a mapping, got {items!r}")


def substitute(value: Any, params: dict, where: str) -> Any:
    """Replace ${params.NAME} in an override value (strings inside lists/mappings too); an unset parameter is one
    error naming the --set that fixes it."""
    if isinstance(value, (list, tuple)):
        return [substitute(v, params, where) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, params, where) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def repl(m):
        name = m.group(1)
        if name not in params:
            raise GridError(f"{where}: ${{params.{name}}} is not a parameter of this grid; known: {sorted(params)}")
        found = params[name]
        if found in (None, "???"):
            raise GridError(f"{where}: params.{name} is not set; pass --set params.{name}=VALUE")
        return str(found)

    text = _PARAM.sub(repl, value)
    return Raw(text) if isinstance(value, Raw) else text


# --- loading -----------------------------------------------------------------------------------------------------
def grid_names() -> list[str]:
    """Grids shipped in ablations/grids/."""
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def grid_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = GRIDS_DIR / f"{p.name.removesuffix('.yaml')}.yaml"
    if str(name_or_path) == p.name and shipped.is_file():
        return shipped
    raise GridError(f"grid {name_or_path!s} not found: give a YAML path or one of the shipped grids {grid_names()}")


def load_grid(name_or_path: str | Path, sets: list[str] = ()) -> Grid:
    """Read a grid spec (shipped name or path) and apply ``--set`` overrides; structural mistakes raise GridError."""
    path = grid_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"grid {path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise GridError(f"grid {path}: expected a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise GridError(f"grid {path}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    where = f"grid {raw.get('name', path.stem)!r} ({path})"
    kind = raw.get("kind", "pretrain")
    if kind not in KINDS:
        raise GridError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    ev = raw.get("evaluate") or {}
    if not isinstance(ev, dict) or set(ev) - _EVAL_KEYS:
        raise GridError(f"{where}: evaluate must be a mapping with keys {sorted(_EVAL_KEYS)}, got {ev!r}")
    grid = Grid(name=str(raw.get("name", path.stem)), source=str(path), kind=kind,
                description=str(raw.get("description", "")).strip(), params=dict(raw.get("params") or {}),
                base=_override_dict(raw.get("base"), f"{where}: base"), profile=str(ev.get("profile", "paper")),
                tasks=_as_list(ev.get("tasks", []), f"{where}: evaluate.tasks"),
                seeds=_as_list(ev.get("seeds", [0]), f"{where}: evaluate.seeds"),
                protocols=_as_list(ev.get("protocols", []), f"{where}: evaluate.protocols"),
                eval_overrides=_override_dict(ev.get("overrides"), f"{where}: evaluate.overrides"),
                tree=raw.get("grid"))
    if kind == "transfer" and not grid.tasks:
        raise GridError(f"{where}: a transfer grid needs evaluate.tasks")
    apply_sets(grid, sets)
    return grid


def _as_list(value, where: str) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)):
        return [v.strip() for v in value.split(",")] if isinstance(value, str) else [value]
    raise GridError(f"{where}: expected a list, got {value!r}")


def apply_sets(grid: Grid, sets: list[str]) -> None:
    """``--set`` overrides, by prefix:

    * ``params.NAME=V``   a grid parameter (``${params.NAME}`` in the spec);
    * ``only.AXIS=a,b``   keep only these labels of an axis;
    * ``evaluate.tasks=[in1k,coco]``, ``evaluate.seeds=[0,1]``, ``evaluate.profile=tiny``,
      ``protocol=[linear,knn]`` (or ``evaluate.protocols=``: each evaluation once per transfer protocol); any other
      ``evaluate.KEY=V`` becomes a transfer override of every evaluation;
    * anything else: an override of every point (it wins over the point's own value).
    """
    for text in sets:
        key, value = split_override(text, f"{grid.where()}: --set")
        parsed = yaml.safe_load(value) if value else ""
        if key.startswith("params."):
            name = key[len("params."):]
            if name not in grid.params:
                raise GridError(f"{grid.where()}: --set {key}: no such parameter; known: {sorted(grid.params)}")
            grid.params[name] = parsed
        elif key.startswith("only."):
            grid.only[key[len("only."):]] = [str(v) for v in _as_list(parsed, f"--set {key}")]
        elif key == "evaluate.tasks":
            grid.tasks = _as_list(parsed, f"--set {key}")
        elif key == "evaluate.seeds":
            grid.seeds = _as_list(parsed, f"--set {key}")
        elif key in ("evaluate.protocols", "evaluate.protocol", "protocol"):
            grid.protocols = [str(v) for v in _as_list(parsed, f"--set {key}")]
        elif key == "evaluate.profile":
            grid.profile = str(parsed)
        elif key.startswith("evaluate."):
            grid.eval_overrides[key[len("evaluate."):]] = Raw(value)
        else:
            grid.forced[key] = Raw(value)


# --- expansion ---------------------------------------------------------------------------------------------------
def _axis_points(node: dict, where: str) -> tuple[str, list[Point]]:
    name = node.get("axis")
    if not name or "values" not in node:
        raise GridError(f"{where}: an axis needs 'axis' (its name) and 'values', got {node!r}")
    unknown = set(node) - {"axis", "key", "values"}
    if unknown:
        raise GridError(f"{where}: axis {name!r} has unknown keys {sorted(unknown)} (allowed: axis, key, values)")
    key, values = node.get("key"), node["values"]
    items = list(values.items()) if isinstance(values, dict) else [(None, v) for v in values] \
        if isinstance(values, list) else None
    if not items:
        raise GridError(f"{where}: axis {name!r}: values must be a non-empty list or mapping")
    points = []
    for label, value in items:
        if isinstance(value, dict):
            ovr = _override_dict(value, f"{where}: axis {name!r}")
        elif isinstance(value, list) and label is not None and all(isinstance(v, str) and "=" in v for v in value):
            ovr = _override_dict(value, f"{where}: axis {name!r}")
        elif key:
            ovr = {key: value}
        else:
            raise GridError(f"{where}: axis {name!r}: value {value!r} needs the axis 'key' it sets "
                            "(or give label -> {key: value} mappings)")
        text = str(label if label is not None else (value if not isinstance(value, list) else hydra_value(value)))
        points.append(Point(((str(name), text),), tuple(ovr.items())))
    return str(name), points


def _expand(node, where: str, only: dict, seen: set) -> list[Point]:
    if node is None:
        return [Point((), ())]
    if isinstance(node, list):
        node = {"product": node}
    if not isinstance(node, dict):
        raise GridError(f"{where}: a grid node is an axis, {{product: [...]}} or {{zip: [...]}}, got {node!r}")
    if "axis" in node:
        name, points = _axis_points(node, where)
        if name in seen:
            raise GridError(f"{where}: axis {name!r} appears twice")
        seen.add(name)
        if name in only:
            labels = [p.labels[0][1] for p in points]
            missing = sorted(set(only[name]) - set(labels))
            if missing:
                raise GridError(f"{where}: only.{name}={missing} are not labels of axis {name!r}; labels: {labels}")
            points = [p for p in points if p.labels[0][1] in only[name]]
        return points
    if set(node) == {"product"}:
        parts = [_expand(n, where, only, seen) for n in node["product"]]
        return [_merge(combo) for combo in itertools.product(*parts)]
    if set(node) == {"zip"}:
        parts = [_expand(n, where, only, seen) for n in node["zip"]]
        lengths = {len(p) for p in parts}
        if len(lengths) > 1:
            raise GridError(f"{where}: zip of axes with different lengths {[len(p) for p in parts]} "
                            "(after only.* restrictions); give them the same number of values")
        return [_merge(combo) for combo in zip(*parts)]
    raise GridError(f"{where}: a grid node is an axis, {{product: [...]}} or {{zip: [...]}}, got keys {sorted(node)}")


def _merge(points) -> Point:
    labels, overrides = [], {}
    for p in points:
        labels += p.labels
        overrides.update(p.overrides)
    return Point(tuple(labels), tuple(overrides.items()))


def expand(grid: Grid) -> list[Point]:
    """Every point of the grid: base overrides, then the point's own, then ``--set`` ones; ${params.*} substituted.

    Override values stay python values (or :class:`Raw` text); :func:`hydra_value` turns them into override text.
    """
    seen: set = set()
    raw = _expand(copy.deepcopy(grid.tree), grid.where(), grid.only, seen)
    unknown_only = sorted(set(grid.only) - seen)
    if unknown_only:
        raise GridError(f"{grid.where()}: only.{unknown_only[0]}: no such axis; axes: {sorted(seen)}")
    out, names = [], set()
    for p in raw:
        merged = {**grid.base, **dict(p.overrides), **grid.forced}
        where = grid.where(p)
        merged = {k: substitute(v, grid.params, f"{where}, key {k}") for k, v in merged.items()}
        point = Point(p.labels, tuple(merged.items()))
        if point.name in names:
            raise GridError(f"{where}: two points have the same labels; give axis values distinct labels")
        names.add(point.name)
        out.append(point)
    return out


def eval_overrides(grid: Grid, point: Point | None = None) -> dict:
    """Transfer overrides of every evaluation (params substituted)."""
    where = grid.where(point) + ", evaluate.overrides"
    return {k: substitute(v, grid.params, f"{where}, key {k}") for k, v in grid.eval_overrides.items()}
