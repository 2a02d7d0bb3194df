"""`fourm-bench transfer`: resolve a task's config, open its run folder, run the task, record metrics, mark DONE.

    fourm-bench transfer task=in1k init=<checkpoint.safetensors | random> data_root=<dir> [profile=paper|tiny]
                         [model=fm_base_12e_12d_swiglu_nobias] [seed=0] [method="4M-B"] [runs_root=runs/transfer]
                         [key.sub=value ...] [--print-config]

A finished run (its folder has DONE) is skipped; an unfinished one resumes from its own checkpoint.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml

from fourm.models import CheckpointError
from fourm.runs import RankRun, Run, open_run, run_id
from transfer.tasks import get_task, tasks
from transfer.configs import DEFAULT_RUNS_ROOT, PROFILES, ConfigError, parse_overrides, resolve

DEFAULT_PROFILE = "paper"


def task_module(task: str):
    """The module implementing a task (``run(config, run)`` and ``build(config)``)."""
    if task not in tasks():
        raise ConfigError(f"unknown transfer task {task!r}; choose from {sorted(tasks())}")
    module = get_task(task).module
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ConfigError(f"transfer task {task!r}: its module {module} cannot be imported") from None
        raise


def make_config(task: str, profile: str = DEFAULT_PROFILE, overrides=()) -> dict:
    """The resolved config of a task (see :func:`transfer.configs.resolve`), after checking the task and profile."""
    if task not in tasks():
        raise ConfigError(f"unknown transfer task {task!r}; choose from {sorted(tasks())}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown transfer profile {profile!r}; choose from {list(PROFILES)}")
    return resolve(task, profile, overrides)


def check_data(config: dict) -> None:
    """The task's checks of its data that need no training (e.g. low-shot shots against the class sizes), when the
    data is already there; a sweep runs them for every point before submitting (ConfigError names the fix)."""
    if not Path(config["data_root"]).is_dir():
        return  # made by an earlier stage of a pipeline: checked when the job starts
    check = getattr(task_module(config["transfer"]["task"]), "check_data", None)
    if check is not None:
        try:
            check(config)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None


def run_transfer(config: dict, runs_root: str | None = None) -> Run:
    """Open the config's run folder and run its task unless the run is DONE; returns the run (metrics in run.metrics).

    Under torchrun or a multi-task SLURM step every rank runs the task (data-parallel, :mod:`fourm.distributed`);
    rank 0 alone writes the run folder, and the other ranks return the finished run."""
    from fourm import distributed as D

    root = runs_root or config.get("_runs_root") or DEFAULT_RUNS_ROOT
    env = D.setup()
    run = open_run(root, config) if env.is_main else RankRun(Path(root) / run_id(config))
    if run.done:
        return run
    module = task_module(config["transfer"]["task"])
    try:
        metrics = module.run(config, run)
    except BaseException as e:  # recorded so `status`/readers see why a partial run stopped; then raised as is
        run.log(event="error", error=f"{type(e).__name__}: {e}")
        raise
    if not env.is_main:
        D.barrier(env)  # rank 0 has written metrics.json and DONE
        return Run(run.path)
    run.write_metrics(metrics)
    run.mark_done()
    run.log(event="done", **{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    D.barrier(env)
    return run


def split_args(argv: list[str]) -> tuple[str, str, list[str], set[str]]:
    """(task, profile, the other KEY=VALUE overrides, flags) from the command line."""
    flags = {a for a in argv if a.startswith("--")}
    pairs = parse_overrides([a for a in argv if not a.startswith("--")])
    task = profile = None
    rest = []
    for key, value in pairs:
        if key in ("task", "transfer.task"):
            task = value
        elif key in ("profile", "transfer.profile"):
            profile = value
        else:
            rest.append(f"{key}={value}")
    if task is None:
        raise ConfigError(f"missing task=<{'|'.join(tasks())}>")
    return task, profile or DEFAULT_PROFILE, rest, flags


def cli(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        print(f"\ntasks: {', '.join(tasks())}; profiles: {', '.join(PROFILES)} (default {DEFAULT_PROFILE}); "
              "configs in transfer/configs/<task>/<profile>.yaml")
        return 0
    try:
        task, profile, overrides, flags = split_args(argv)
        unknown_flags = flags - {"--print-config"}
        if unknown_flags:
            raise ConfigError(f"unknown flag(s) {sorted(unknown_flags)}; the only flag is --print-config")
        config = make_config(task, profile, overrides)
    except ConfigError as e:
        print(f"fourm-bench transfer: {e}", file=sys.stderr)
        return 2
    if "--print-config" in flags:
        print(f"# run id {run_id(config)}")
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    try:
        task_module(task)
        check_data(config)
    except ConfigError as e:
        print(f"fourm-bench transfer: {e}", file=sys.stderr)
        return 2
    root = config.get("_runs_root") or DEFAULT_RUNS_ROOT
    was_done = Run(Path(root) / run_id(config)).done
    try:
        run = run_transfer(config)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:  # wrong data_root/init/layout: one line, no traceback
        print(f"fourm-bench transfer: {e}", file=sys.stderr)
        return 2
    print(f"transfer {task}/{profile}: {'already done (skipped)' if was_done else 'done'}, run {run.path}")
    print("metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in run.metrics.items()))
    return 0
