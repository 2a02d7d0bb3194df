"""Grid points -> validated runs: resolved pretraining configs and the transfer evaluations that depend on them.

Every point is checked before anything is submitted (model known, modalities registered, alphas match the modality
list via ``fourm.data.masking.UnifiedMasking``, token budgets within what the modalities hold, transfer tasks known
and their configs resolving). The first bad point raises one :class:`GridError` naming the point and the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ablations.grid import Grid, GridError, Point, eval_overrides, expand, hydra_value
from ablations.resolve import PretrainResolver, ResolveError
from fourm import modalities as M
from fourm.runs import run_id

# run_from_config drops these from a run's identity: they say where/how to run, not what


@dataclass(frozen=True)
class PlannedRun:
    kind: str  # pretrain | transfer
    point: str  # the grid point's name (axis=label,...)
    run_id: str
    run_dir: str
    config: dict
    after: tuple[str, ...] = ()
    model: str = ""  # model name (for the GPU-hours estimate)
    tokens: int = 0  # pretraining tokens (pretrain runs)
    task: str | None = None
    profile: str | None = None


def final_checkpoint(run_dir: str | Path, cfg: dict) -> Path:
    """Where a pretraining run leaves its final weights (known in advance: the config fixes the last step)."""
    from fourm.pretrain.loop import total_steps

    return Path(run_dir) / "checkpoints" / f"step-{total_steps(cfg):06d}" / "model.safetensors"


class _Checks:
    """Caches for the per-point checks (a thousand points share a handful of alphas / transfer configs).

    Shared by every plan of a process: the config files they depend on do not change while it runs.
    """

    masking: dict = {}
    transfer: dict = {}
    data: dict = {}

    def masking_error(self, mods: tuple, alphas, n_in: int, n_tg: int) -> str | None:
        from fourm.data.masking import MissingTextTokenizer, UnifiedMasking

        key = (mods, repr(alphas), n_in, n_tg)
        if key not in self.masking:
            try:
                UnifiedMasking(list(mods), alphas, n_in, n_tg, text_tokenizer=None)
                self.masking[key] = None
            except MissingTextTokenizer:
                # the tokenizer is loaded from data files on the worker; every alphas/budget check runs before this one
                self.masking[key] = None
            except ValueError as e:
                self.masking[key] = str(e)
            except (FileNotFoundError, KeyError) as e:
                self.masking[key] = str(e.args[0] if e.args else e)
        return self.masking[key]

    def transfer_config(self, task: str, profile: str, overrides: dict, init: str) -> dict:
        from transfer.configs import SHORTCUTS
        from transfer.run import make_config

        # shortcut keys (paths, labels) are taken verbatim by the transfer resolver; the rest is hydra text
        text = {k: str(v) if k in SHORTCUTS else hydra_value(v) for k, v in overrides.items()}
        key = (task, profile, tuple(sorted(text.items())))
        if key not in self.transfer:
            self.transfer[key] = make_config(task, profile, [f"{k}={v}" for k, v in text.items()] + ["init=random"])
        cfg = copy.deepcopy(self.transfer[key])
        cfg["transfer"]["init"] = init  # what resolve does with an absolute path to a file that may not exist yet
        return cfg


    def transfer_data(self, cfg: dict) -> None:
        """The task's data checks (:func:`transfer.run.check_data`), once per distinct data question."""
        from transfer.run import check_data

        key = (cfg["transfer"]["task"], cfg["data_root"], repr(sorted((cfg.get("data") or {}).items())))
        if key not in self.data:
            check_data(cfg)
            self.data[key] = None


def check_pretrain(cfg: dict, checks: _Checks) -> tuple[str, str] | None:
    """(key, problem) for the first thing wrong with a resolved pretraining config, or None."""
    from fourm.models import config_for
    from fourm.pretrain.data import alphas_spec

    model = cfg.get("model") or {}
    try:
        config_for(model.get("name", ""))
    except ValueError as e:
        return "model.name", str(e)
    dom_in, dom_out = list(model.get("domains_in") or []), list(model.get("domains_out") or [])
    for key, names in (("model.domains_in", dom_in), ("model.domains_out", dom_out)):
        if not names:
            return key, "empty modality list"
        try:
            M.check(names, where=key)
        except KeyError as e:
            return key, e.args[0]
    no_decoder = [n for n in dom_out if not M.get(n).has_decoder]
    if no_decoder:
        return "model.domains_out", f"{no_decoder} have no decoder (raw images are input-only)"
    budget = cfg.get("budget") or {}
    n_in, n_tg = budget.get("num_input_tokens"), budget.get("num_target_tokens")
    for key, n, names in (("budget.num_input_tokens", n_in, dom_in), ("budget.num_target_tokens", n_tg, dom_out)):
        limit = sum(M.get(m).num_tokens for m in names)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= limit:
            return key, f"{n!r} must be an int in 1..{limit} (the tokens {names} hold)"
    for key in ("batch_size", "schedule.total_tokens", "seed"):
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            return key, f"{value!r} must be a {'non-negative' if key == 'seed' else 'positive'} int"
    mods = tuple(dict.fromkeys(dom_in + dom_out))
    problem = checks.masking_error(mods, alphas_spec(cfg.get("alphas")), n_in, n_tg)
    if problem:
        return "alphas", problem
    return None


def plan(grid: Grid, runs_root: str | Path, progress: bool = True) -> list[PlannedRun]:
    """Expand and validate the grid; pretraining runs first, then their evaluations. Raises GridError."""
    from transfer.configs import ConfigError
    from transfer.tasks import tasks

    TASKS = tasks()

    runs_root = Path(runs_root).expanduser().resolve()
    points = expand(grid)
    unknown = [t for t in grid.tasks if t not in TASKS]
    if unknown:
        raise GridError(f"{grid.where()}: evaluate.tasks {unknown} are not transfer tasks; known: {sorted(TASKS)}")
    checks, resolver = _Checks(), PretrainResolver() if grid.kind == "pretrain" else None
    pretrain, transfer, owner = [], [], {}

    def add_transfer(point: Point, task: str, seed, overrides: dict, init: str, model: str, after=()):
        where = grid.where(point) + f", evaluate {task} seed {seed}" + \
            (f" protocol {overrides['protocol']}" if overrides.get("protocol") else "")
        if task not in TASKS:
            raise GridError(f"{where}: key task: {task!r} is not a transfer task; known: {sorted(TASKS)}")
        ovr = {**overrides, "seed": seed, "runs_root": str(runs_root / "transfer")}
        if model:
            ovr["model"] = model
        try:
            cfg = checks.transfer_config(task, grid.profile, ovr, init)
            checks.transfer_data(cfg)
        except ConfigError as e:
            raise GridError(f"{where}: {e}") from None
        cfg["_ablation"] = {"grid": grid.name, **dict(point.labels)}
        rid = run_id(cfg)
        if rid in owner:
            raise GridError(f"{where}: resolves to the same transfer run as {owner[rid]}; make the points differ")
        owner[rid] = f"point {point.name} ({task}, seed {seed}{', ' + overrides['protocol'] if overrides.get('protocol') else ''})"
        transfer.append(PlannedRun("transfer", point.name, rid, str(runs_root / "transfer" / rid), cfg, tuple(after),
                                   cfg["transfer"].get("model", ""), task=task, profile=grid.profile))

    for point in tqdm(points, desc=f"validate {grid.name}", unit="point", disable=not progress):
        where = grid.where(point)
        ovr = dict(point.overrides)
        if grid.kind == "transfer":
            task = ovr.pop("task", None)
            init = ovr.pop("init", None)
            if init in (None, "", "???"):
                raise GridError(f"{where}: key init: a transfer grid point needs init=<checkpoint path|random>")
            init = str(init)
            if init != "random":
                init = str(Path(init).expanduser().resolve())
            model = str(ovr.pop("model", ""))
            for t in ([task] if task else grid.tasks):
                for seed in grid.seeds:
                    for protocol in grid.protocols or [None]:
                        extra = {"protocol": protocol} if protocol else {}
                        add_transfer(point, t, seed, {**eval_overrides(grid, point), **ovr, **extra}, init, model)
            continue
        try:
            cfg = resolver({k: hydra_value(v) for k, v in ovr.items()})
        except ResolveError as e:
            raise GridError(f"{where}: key {e.key}: {e}") from None
        problem = check_pretrain(cfg, checks)
        if problem:
            raise GridError(f"{where}: key {problem[0]}: {problem[1]}")
        identity = dict(cfg)  # its _runs_root and _resume are not identity (fourm.runs.identity)
        identity["_ablation"] = {"grid": grid.name, **dict(point.labels)}
        rid = run_id(identity)
        if rid in owner:
            raise GridError(f"{where}: resolves to the same pretraining config as {owner[rid]}; make the points differ")
        owner[rid] = f"point {point.name}"
        run_dir = runs_root / "pretrain" / rid
        from fourm.pretrain.loop import total_steps, tokens_per_step

        pretrain.append(PlannedRun("pretrain", point.name, rid, str(run_dir), identity, (), cfg["model"]["name"],
                                   tokens=total_steps(cfg) * tokens_per_step(cfg)))
        for task in grid.tasks:
            for seed in grid.seeds:
                for protocol in grid.protocols or [None]:
                    extra = {"protocol": protocol} if protocol else {}
                    add_transfer(point, task, seed, {**eval_overrides(grid, point), **extra},
                                 str(final_checkpoint(run_dir, cfg)), cfg["model"]["name"], after=(rid,))
    return pretrain + transfer
