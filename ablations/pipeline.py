"""Pipelines: an end-to-end recipe as a graph of jobs, run by the local launcher or on SLURM.

    fourm-bench pipeline RECIPE [--work W] [--out O] [--launcher local|slurm] [--set key=value ...] [--dry-run] [--wait]
    fourm-bench demo [--size full|tiny] [--launcher local|slurm] [--work W] [--out O]

A recipe (``ablations/pipelines/<name>.yaml``, or any YAML path) states the stages: the world (or an existing
4M-layout dataset), the WordPiece text tokenizer, the VQ-VAE tokenizers, the token shards, pretraining (one run per
model), a random-init checkpoint, the transfers (init x task x seed), the out-of-the-box run, generations, and a
report. :func:`ablations.stages.expand` turns it into :class:`slurm.submit.Job` s with ``after`` dependencies (each
stage kind's recipe keys and defaults are in :mod:`ablations.stages`); every job's run folder
is ``<work>/<stage>/<run id>`` (the hash of its config), so both launchers write the same folders and a rerun (on
either) redoes nothing that is DONE. The manifest and job logs are in ``<work>/pipeline-<launcher>``.

The local launcher runs jobs in the recipe's order as their parents finish, as many at once as their
``cpus_per_task`` fit in the machine's cores, and blocks until all have ended; ``--launcher slurm`` submits job
arrays with ``afterok`` dependencies and returns (``--wait`` follows them to the end).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ablations.stages import PlannedStage, RecipeError, expand  # noqa: F401  (expand, RecipeError: the pipeline API)
from slurm.submit import LAUNCHERS

RECIPES = Path(__file__).resolve().parent / "pipelines"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(recipe: str | Path, sets: list[str] = ()) -> tuple[Path, dict]:
    """The recipe's path and its content with ``key=value`` overrides applied; unset (``???``) keys are an error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(recipe)
    if not path.suffix:
        path = RECIPES / f"{recipe}.yaml"
    if not path.is_file():
        raise RecipeError(f"recipe {recipe!r}: no such file; pass a YAML path or one of {', '.join(recipe_names())}")
    try:
        cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(sets)))
    except OmegaConfBaseException as e:
        raise RecipeError(f"{path}: {e}") from e
    missing = sorted(_missing(cfg))
    if missing:
        raise RecipeError(f"{path}: {', '.join(missing)} not set; pass --set {missing[0]}=<value>")
    try:
        return path, OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise RecipeError(f"{path}: {e}") from e


def _missing(cfg, prefix: str = "") -> list[str]:
    """Keys whose value is ``???`` (without resolving interpolations, which would fail on them first)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out = []
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for k, _ in items:
        key = f"{prefix}{k}"
        if OmegaConf.is_missing(cfg, k):
            out.append(key)
            continue
        node = cfg._get_node(k)
        if isinstance(node, (DictConfig, ListConfig)):
            out += _missing(node, key + ".")
    return out


def sweep_dir(work: str | Path, launcher: str) -> Path:
    return Path(work).expanduser().resolve() / f"pipeline-{launcher}"


ARRAY_TASK = re.compile(r"^(.*) \[(\d+)/(\d+)\]$")  # "labels depth [3/100]": one task of an array


def describe(stages: list[PlannedStage]) -> str:
    """One line per job: kind, name, run folder, what it waits for, and its resources; DONE ones marked. The tasks
    of an array (``<name> [i/n]``) share one line: ``<name> [array of n, k DONE]``."""
    names = {}
    for s in stages:
        m = ARRAY_TASK.match(s.name)
        names[Path(s.job.run_dir).name] = f"{m[1]} [array]" if m else s.name
    lines, seen = [], {}
    for s in stages:
        m = ARRAY_TASK.match(s.name)
        done = (Path(s.job.run_dir) / "DONE").exists()
        if m and m[1] in seen:
            seen[m[1]]["n"] += 1
            seen[m[1]]["done"] += done
            continue
        r = s.job.resources
        res = f"{r.cpus_per_task} cpu" + (f", {r.gpus_per_node * r.nodes} gpu" if r.gpus_per_node else "")
        after = sorted(set(names.get(a, a) for a in s.job.after))
        after_text = ", ".join(after) if len(after) <= 3 else f"{len(after)} stages ({len(s.job.after)} jobs)"
        row = {"name": m[1] if m else s.name, "array": bool(m), "n": 1, "done": int(done), "res": res,
               "after": after_text or "-"}
        lines.append(row)
        if m:
            seen[m[1]] = row
    out = []
    for i, row in enumerate(lines):
        name = row["name"] + (f" [array of {row['n']}" + (f", {row['done']} DONE" if row["done"] else "") + "]"
                              if row["array"] else "")
        mark = "DONE " if not row["array"] and row["done"] else "     "
        out.append(f"{i + 1:3d}. {mark}{name:50s} {row['res']:12s} after: {row['after']}")
    return "\n".join(out)


def gpu_hours(stages: list[PlannedStage]) -> str:
    """The GPU-hours of the jobs not yet DONE: estimated where a job's config carries ``_cost_s`` (GPU-seconds, e.g.
    labels and shards from ``gpu_s_per_image`` x images), else the jobs' reservation (GPUs x time limit)."""
    estimated = reserved = 0.0
    n_est = n_res = 0
    for s in stages:
        r = s.job.resources
        gpus = r.gpus_per_node * r.nodes
        if not gpus or (Path(s.job.run_dir) / "DONE").exists():
            continue
        cost = s.job.config.get("_cost_s")
        if cost is not None:
            estimated, n_est = estimated + float(cost) / 3600, n_est + 1
        else:
            reserved, n_res = reserved + gpus * r.timeout_min / 60, n_res + 1
    if not n_est and not n_res:
        return "GPU-hours: none (no GPU job left to run)"
    parts = []
    if n_est:
        shown = f"{estimated:,.1f}" if estimated >= 1 else f"{estimated:.2g}"
        parts.append(f"{shown} estimated for {n_est} jobs (gpu_s_per_image x images)")
    if n_res:
        parts.append(f"at most {reserved:,.0f} reserved by {n_res} other jobs (GPUs x time limit)")
    return "GPU-hours: " + "; ".join(parts)


class PipelineError(RuntimeError):
    """Jobs of a pipeline ended without DONE: names each, and its log."""


def run_pipeline(recipe: str | Path, work: str | Path, out: str | Path, launcher: str = "local", sets: list[str] = (),
                 wait: bool = False, python: str | None = None) -> dict:
    """Expand the recipe and submit its graph; with the local launcher (or ``wait``) return once all jobs ended.

    Returns ``{"submitted": run ids, "stages": [...], "seconds": wall time, "sweep_dir": ...}``; raises
    :class:`PipelineError` when a job ended without DONE (after the others that could still run)."""
    from slurm import status as st
    from slurm.submit import submit

    path, cfg = load_recipe(recipe, sets)
    stages = expand(cfg, work, out, path)
    sdir = sweep_dir(work, launcher)
    t0 = time.perf_counter()
    submitted = submit(sdir, [s.job for s in stages], launcher=launcher, python=python)
    if launcher == "slurm" and wait:
        st.wait(sdir)
    seconds = time.perf_counter() - t0
    result = {"submitted": submitted, "seconds": seconds, "sweep_dir": str(sdir),
              "stages": [{"kind": s.kind, "name": s.name, "run_dir": s.job.run_dir} for s in stages]}
    if launcher == "local" or wait:
        rows = st.status(sdir).by_run()
        bad = [(s, rows[Path(s.job.run_dir).name]) for s in stages if not (Path(s.job.run_dir) / "DONE").exists()]
        if bad:
            log_dir = json.loads((sdir / "manifest.json").read_text())["log_dir"]
            lines = []
            for s, row in bad:
                logs = [str(p) for p in st.log_files(log_dir, row.job_id) if p.exists() and p.stat().st_size]
                lines.append(f"  {s.name}: {row.state}" + (f"; its output is in {logs[0]}" if logs else ""))
            raise PipelineError(f"pipeline {path.stem}: {len(bad)} of {len(stages)} jobs did not finish:\n"
                                + "\n".join(lines) + "\nfix the cause, then run the same command again "
                                "(finished jobs are not redone)")
    return result


def cli(argv: list[str], prog: str = "fourm-bench pipeline", default_recipe: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if default_recipe is None:
        ap.add_argument("recipe", help=f"a recipe YAML or a shipped one: {', '.join(recipe_names())}")
    else:
        ap.add_argument("--size", choices=("full", "tiny"), default="full", help="full: the README demo; tiny: minutes")
    ap.add_argument("--launcher", choices=LAUNCHERS, default="local")
    ap.add_argument("--work", help="run folders go to <work>/<stage>/<run id> (default: the recipe's `work`)")
    ap.add_argument("--out", help="the report's tables and plots (default: the recipe's `out`)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the job graph and submit nothing")
    ap.add_argument("--print-config", action="store_true", help="print every job's resolved config and submit nothing")
    ap.add_argument("--wait", action="store_true", help="slurm: wait until every job has ended")
    args = ap.parse_args(argv)
    recipe = args.recipe if default_recipe is None else ("demo" if args.size == "full" else "demo_tiny")
    try:
        path, cfg = load_recipe(recipe, args.set)
        work, out = args.work or cfg.get("work") or "runs/pipeline", args.out or cfg.get("out") or "results/pipeline"
        stages = expand(cfg, work, out, path)
    except RecipeError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from fourm.configs import format_configs

        print(format_configs((f"{s.name} ({s.kind}) -> {s.job.run_dir}", s.job.config) for s in stages))
        return 0
    print(f"{path.stem}: {len(stages)} jobs, run folders under {Path(work).resolve()}, report in {Path(out).resolve()}")
    print(describe(stages))
    print(gpu_hours(stages))
    if args.dry_run:
        print("dry run: nothing submitted")
        return 0
    try:
        result = run_pipeline(path, work, out, args.launcher, args.set, wait=args.wait)
    except PipelineError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    sdir = result["sweep_dir"]
    if args.launcher == "slurm" and not args.wait:
        print(f"submitted {len(result['submitted'])} jobs; follow with: fourm-bench status {sdir}")
        return 0
    report = Path(out) / "report.md"
    if report.exists():
        print("\n" + report.read_text())
    print(f"{path.stem} done in {result['seconds']:.0f} s; outputs in {Path(out)}/, manifest {sdir}/manifest.json")
    return 0


def demo_cli(argv: list[str]) -> int:
    """`fourm-bench demo`: the demo recipe (``--size tiny``: the tiny one) through :func:`cli`."""
    return cli(argv, prog="fourm-bench demo", default_recipe="demo")
