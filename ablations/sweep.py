"""`fourm-bench sweep GRID`: expand an ablation grid, validate every point, submit what is not DONE and not queued.

    fourm-bench sweep GRID [--launcher slurm|local] [--dry-run] [--partition P] [--gpus-per-node G] [--max-nodes N]
                           [--time MIN] [--array-parallelism K] [--set key=value ...] [--sweep-dir D] [--runs-root R]

Each point pretrains (one SLURM array task) and is then evaluated on the grid's transfer tasks (jobs ``afterok`` its
pretraining job, ``init`` = the pretraining run's final checkpoint, whose path is fixed by the config). Run folders are
``<runs-root>/{pretrain,transfer}/<run id>`` (the id hashes the resolved config), the sweep folder holds the manifest
and the job logs; `fourm-bench status <sweep folder>` shows the runs, `fourm-bench results collect <runs-root>` the
results. Submitting again submits only runs neither DONE nor queued/running. ``--launcher local`` runs the jobs as
local processes (parents first) and returns when they have ended; ``slurm`` returns once the manifest is written.

Job shapes come from the recipes (:mod:`slurm.shapes`): each job gets the nodes x GPUs (one rank per GPU) that keep
its recipe's global batch, up to the recipe's reference GPU count, ``--gpus-per-node`` and ``--max-nodes``, with
gradient accumulation where the task has it; ``--dry-run`` prints every job's shape. ``--gpus-per-node 0`` runs every
job as one CPU task. A shape that cannot keep the global batch, or more GPUs/nodes than the partition has (``sinfo``),
is an error before anything is submitted.

GPU-hours estimate (printed by --dry-run): pretraining GPU-seconds = tokens / (tokens/s per GPU). Unless measured
numbers are given with ``--tokens-per-s SIZE=N``, tokens/s per GPU is *assumed* from FLOPs: 6 x 12 d^2 x (E + D) / 2
FLOPs per token (each input token crosses the encoder, each target token the decoder), at 30% of an A100's 312
bf16 TFLOP/s. Transfer evaluations are *assumed* from per-task figures for ViT-B under the paper protocols
(each task's ``gpu_hours_b`` in :mod:`transfer.tasks`), scaled by encoder FLOPs per token; tiny-profile runs count as 0.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ablations.grid import GridError, grid_names, load_grid
from ablations.plan import PlannedRun, plan
from ablations.stages import get_stage
from fourm.models.factory import SIZES
from slurm import manifest as mf
from slurm.shapes import Shape, ShapeError, job_shape
from slurm.submit import LAUNCHERS, Job, Resources
from transfer.tasks import get_task

ENTRIES = {kind: get_stage(kind).entry for kind in ("pretrain", "transfer")}
PEAK_FLOPS = 312e12  # A100 bf16 dense
MFU = 0.30
DEFAULT_MAX_ARRAY = 1001  # SLURM's default MaxArraySize, when no cluster answers


def _size(model_name: str) -> str:
    parts = model_name.split("_")
    return parts[1] if len(parts) > 1 and parts[1] in SIZES else "base"


def assumed_tokens_per_s(size: str) -> float:
    """Training tokens/s per A100 from FLOPs (see the module docstring)."""
    d, _, e, dd = SIZES[size]
    return MFU * PEAK_FLOPS / (6 * 12 * d * d * (e + dd) / 2)


def gpu_hours(run: PlannedRun, measured: dict[str, float]) -> float:
    """Estimated GPU-hours of one planned run (the total over its GPUs: the shape changes the wall time, not this)."""
    size = _size(run.model)
    if run.kind == "pretrain":
        return run.tokens / measured.get(size, assumed_tokens_per_s(size)) / 3600
    if run.profile != "paper":
        return 0.0
    d, _, e, _ = SIZES[size]
    base_d, _, base_e, _ = SIZES["base"]
    return get_task(run.task).gpu_hours_b * (d * d * e) / (base_d * base_d * base_e)


@dataclass
class SweepPlan:
    grid: str
    sweep_dir: Path
    runs: list[PlannedRun]
    done: set = field(default_factory=set)
    queued: dict = field(default_factory=dict)  # run id -> job id still queued/running
    max_array: int = DEFAULT_MAX_ARRAY

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.run_id not in self.done and r.run_id not in self.queued]

    def format(self, measured: dict[str, float] | None = None, resources: dict | None = None,
               shapes: dict[str, Shape] | None = None) -> str:
        measured = measured or {}
        todo = self.todo
        lines = [f"sweep {self.grid} -> {self.sweep_dir}"]
        for kind in ("pretrain", "transfer"):
            runs = [r for r in self.runs if r.kind == kind]
            if not runs:
                continue
            k_todo = [r for r in todo if r.kind == kind]
            lines.append(f"  {kind:9s} {len(runs):5d} runs: {sum(r.run_id in self.done for r in runs)} DONE, "
                         f"{sum(r.run_id in self.queued for r in runs)} queued/running, {len(k_todo)} to submit")
        pre = [r for r in todo if r.kind == "pretrain"]
        tra = [r for r in todo if r.kind == "transfer"]
        if pre:
            arrays = math.ceil(len(pre) / self.max_array)
            lines.append(f"  arrays: pretraining {len(pre)} tasks in {arrays} array(s) of <= {self.max_array} "
                         "(MaxArraySize)")
        if tra:
            parents = Counter(r.after[0] if r.after else None for r in tra)
            with_dep = sum(n for p, n in parents.items() if p and p not in self.done)
            arrays = len({(r.after[0] if r.after else None, shapes[r.run_id] if shapes else None) for r in tra})
            lines.append(f"  arrays: transfer {len(tra)} jobs in {arrays} array(s) (one per pretraining run and job shape); "
                         f"{with_dep} afterok a pretraining job, {len(tra) - with_dep} without dependency")
        if resources:
            lines.append("  resources: " + ", ".join(f"{k} {v}" for k, v in resources.items()))
        if shapes and todo:
            lines.append(f"  {'job':44s} {'nodes':>5s} {'tasks':>5s} {'batch/rank':>10s} {'accum':>5s} "
                         f"{'global':>6s} {'ref GPUs':>8s} {'GPU-h':>8s}")
            for r in todo:
                sh = shapes[r.run_id]
                name = f"{r.kind} {r.task or r.model} {r.point}"[:44]
                lines.append(f"  {name:44s} {sh.nodes:5d} {sh.tasks_per_node:5d} {sh.per_rank_batch:10d} {sh.accum:5d} "
                             f"{sh.global_batch:6d} {sh.reference_gpus:8d} {gpu_hours(r, measured):8.1f}")
        hours = Counter()
        for r in todo:
            hours[r.kind] += gpu_hours(r, measured)
        sizes = sorted({_size(r.model) for r in todo if r.kind == "pretrain"})
        basis = ", ".join(f"{s}: {measured[s]:.3g} tok/s/GPU measured" if s in measured else
                          f"{s}: {assumed_tokens_per_s(s):.3g} tok/s/GPU assumed" for s in sizes)
        lines.append(f"  GPU-hours (to submit): pretrain {hours['pretrain']:.1f}, transfer {hours['transfer']:.1f}, "
                     f"total {hours['pretrain'] + hours['transfer']:.1f}" + (f"  [{basis}]" if basis else ""))
        return "\n".join(lines)


def _queued(sweep_dir: Path, launcher: str) -> dict[str, str]:
    """Run id -> job id of runs whose latest job in this sweep's manifest is still queued or running."""
    path = mf.manifest_path(sweep_dir)
    if not path.exists():
        return {}
    from slurm.submit import make_launcher

    data = mf.load(path)
    latest = {rid: mf.latest_job(e) for rid, e in data["runs"].items()
              if mf.latest_job(e) and not (Path(e["run_dir"]) / "DONE").exists()}
    if not latest:
        return {}
    states = make_launcher(data["launcher"], data["log_dir"]).states([j["job_id"] for j in latest.values()])
    return {rid: j["job_id"] for rid, j in latest.items() if states[j["job_id"]].active}


def _cancel_orphans(sweep_dir: Path, timeout_s: float = 60) -> list[str]:
    """Cancel jobs that wait for a parent that failed (SLURM would cancel them a moment later anyway), so that a
    resubmission resubmits them after their resubmitted parent instead of seeing them as queued."""
    from slurm import scheduler
    from slurm.submit import make_launcher

    path = mf.manifest_path(sweep_dir)
    if not path.exists():
        return []
    data = mf.load(path)
    if data["launcher"] != "slurm":
        return []
    launcher = make_launcher("slurm", data["log_dir"])
    jobs = [mf.latest_job(e)["job_id"] for e in data["runs"].values()
            if mf.latest_job(e) and not (Path(e["run_dir"]) / "DONE").exists()]
    states = launcher.states(jobs)
    orphans = [j for j, s in states.items() if s.state == "PENDING" and "DependencyNeverSatisfied" in s.reason]
    if orphans:
        launcher.cancel(orphans)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and any(s.active for s in scheduler.job_states(orphans).values()):
            time.sleep(0.5)
    return orphans


def make_plan(grid_name: str, sets: list[str] = (), sweep_dir: str | Path | None = None, runs_root: str | Path = "runs",
              launcher: str = "slurm", progress: bool = True) -> SweepPlan:
    """Expand and validate the grid and find which runs are DONE or queued; submits nothing."""
    grid = load_grid(grid_name, list(sets))
    sweep_dir = Path(sweep_dir or Path("sweeps") / grid.name).expanduser().resolve()
    runs = plan(grid, runs_root, progress=progress)
    done = {r.run_id for r in runs if (Path(r.run_dir) / "DONE").exists()}
    max_array = DEFAULT_MAX_ARRAY
    if launcher == "slurm":
        try:
            from slurm import scheduler

            max_array = scheduler.max_array_size()
        except (OSError, RuntimeError):
            pass  # no cluster here (a dry run on a laptop): SLURM's default
    return SweepPlan(grid.name, sweep_dir, runs, done, _queued(sweep_dir, launcher), max_array)


def shape_for(run: PlannedRun, gpus_per_node: int, max_nodes: int | None = None) -> Shape:
    """The job shape of a planned run from its recipe (see the module docstring)."""
    cfg = run.config
    if run.kind == "pretrain":
        accum = int(cfg.get("accum_steps", 1))
        batch, ref, what = int(cfg["batch_size"]), int(cfg.get("distributed", {}).get("reference_gpus", 1)), \
            f"pretrain {run.point} (batch_size, distributed.reference_gpus)"
    else:
        accum = int(cfg["train"].get("accum_iter", 1))
        batch, ref, what = int(cfg["train"]["batch_size"]), int(cfg.get("_runtime", {}).get("reference_gpus", 1)), \
            f"transfer {run.task}/{run.profile} {run.point} (train.batch_size, _runtime.reference_gpus)"
    if gpus_per_node == 0:  # CPU jobs: one task with the whole batch
        return Shape(1, 1, batch // accum, accum, batch, ref)
    # only a task registered with may_accumulate (ImageNet-1K) adds accumulation for a job shape (_runtime.accum_iter);
    # the others keep the recipe's own
    adds_accum = run.kind == "transfer" and get_task(run.task).may_accumulate
    shape = job_shape(batch // accum, ref, gpus_per_node, max_nodes or 1_000_000, what=what,
                      can_accumulate=adds_accum)
    return Shape(shape.nodes, shape.tasks_per_node, shape.per_rank_batch, shape.accum * accum, batch, ref)


def resources_for(shape: Shape, partition: str | None, gpus_per_node: int, time_min: int, array_parallelism: int,
                  cpus_per_task: int, mem_gb: float | None, max_nodes: int | None = None) -> Resources:
    """One rank per GPU: ``shape.tasks_per_node`` tasks and GPUs on each of ``shape.nodes`` nodes."""
    return Resources(partition=partition, gpus_per_node=shape.tasks_per_node if gpus_per_node else 0, nodes=shape.nodes,
                     tasks_per_node=shape.tasks_per_node, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                     timeout_min=time_min, array_parallelism=array_parallelism)


def with_shape(run: PlannedRun, shape: Shape) -> dict:
    """The run's config as its job runs it: the accumulation of a task that may accumulate (ImageNet-1K) for the shape,
    in ``_runtime`` (not identity)."""
    if run.kind == "transfer" and get_task(run.task).may_accumulate and shape.accum != int(run.config["train"].get("accum_iter", 1)):
        return {**run.config, "_runtime": {**run.config.get("_runtime", {}), "accum_iter": shape.accum}}
    return run.config


def check_partition(shapes: dict[str, Shape], partition: str | None, gpus_per_node: int) -> None:
    """More nodes or GPUs per node than the partition has (``sinfo``, when there is a cluster) is an error."""
    from slurm import scheduler

    info = scheduler.partition_info(partition)
    if info is None or not shapes:
        return
    nodes = max(s.nodes for s in shapes.values())
    where = f"partition {info.name!r}"
    if nodes > info.nodes:
        raise ShapeError(f"a job needs {nodes} nodes but {where} has {info.nodes} (sinfo); pass --max-nodes "
                         f"{info.nodes} or another --partition")
    if gpus_per_node and info.gpus_per_node is not None and gpus_per_node > info.gpus_per_node:
        raise ShapeError(f"--gpus-per-node {gpus_per_node} but the nodes of {where} have {info.gpus_per_node} GPUs "
                         f"(sinfo); pass --gpus-per-node {info.gpus_per_node}")


def plan_shapes(p: SweepPlan, gpus_per_node: int, max_nodes: int | None) -> dict[str, Shape]:
    return {r.run_id: shape_for(r, gpus_per_node, max_nodes) for r in p.runs}


def submit_plan(p: SweepPlan, launcher: str = "slurm", shapes: dict[str, Shape] | None = None, **res) -> list[str]:
    """Submit every run of the plan that is neither DONE nor queued (the whole plan goes into the manifest)."""
    from slurm.submit import submit

    shapes = shapes or plan_shapes(p, res["gpus_per_node"], res.get("max_nodes"))
    if launcher == "slurm":
        _cancel_orphans(p.sweep_dir)
    jobs = [Job(r.run_dir, with_shape(r, shapes[r.run_id]), ENTRIES[r.kind], after=tuple(a for a in r.after),
                resources=resources_for(shapes[r.run_id], **res)) for r in p.runs]
    return submit(p.sweep_dir, jobs, launcher=launcher)


def cli(argv: list[str]) -> int:
    """`fourm-bench sweep GRID ...` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="fourm-bench sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help=f"a grid YAML or a shipped grid: {', '.join(grid_names())}")
    ap.add_argument("--launcher", choices=LAUNCHERS, default="slurm")
    ap.add_argument("--dry-run", action="store_true", help="print the job plan and submit nothing")
    ap.add_argument("--print-config", action="store_true", help="print every run's resolved config and submit nothing")
    ap.add_argument("--partition")
    ap.add_argument("--gpus-per-node", "--gpus", dest="gpus_per_node", type=int, default=1,
                    help="GPUs of a node (one rank each); 0: CPU jobs, one task each")
    ap.add_argument("--max-nodes", type=int, help="nodes one job may take (default: as many as its recipe needs)")
    ap.add_argument("--time", type=int, default=1440, help="time limit per job, minutes")
    ap.add_argument("--array-parallelism", type=int, default=256)
    ap.add_argument("--cpus-per-task", type=int, default=1)
    ap.add_argument("--mem-gb", type=float)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="grid override (repeatable)")
    ap.add_argument("--sweep-dir", help="manifest and logs (default sweeps/<grid name>)")
    ap.add_argument("--runs-root", default="runs", help="run folders go to <runs-root>/{pretrain,transfer}")
    ap.add_argument("--tokens-per-s", action="append", default=[], metavar="SIZE=N",
                    help="measured pretraining tokens/s per GPU for a model size (GPU-hours estimate)")
    args = ap.parse_args(argv)
    try:
        measured = {k: float(v) for k, v in (s.split("=", 1) for s in args.tokens_per_s)}
        res = dict(partition=args.partition, gpus_per_node=args.gpus_per_node, time_min=args.time,
                   array_parallelism=args.array_parallelism, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                   max_nodes=args.max_nodes)
        resources_for(Shape(1, 1, 1, 1, 1, 1), **res)  # bad resources fail before the grid is expanded
        p = make_plan(args.grid, args.set, args.sweep_dir, args.runs_root, args.launcher)
        shapes = plan_shapes(p, args.gpus_per_node, args.max_nodes)
        partition_error = None
        if args.launcher == "slurm":
            try:
                check_partition(shapes, args.partition, args.gpus_per_node)
            except ShapeError as e:
                partition_error = str(e)
    except (GridError, ValueError) as e:
        print(f"fourm-bench sweep: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from fourm.configs import format_configs

        print(format_configs((f"{r.kind} {r.point} run {r.run_id} -> {r.run_dir}", r.config) for r in p.runs))
        return 0
    shown = {"gpus/node": args.gpus_per_node, "max nodes": args.max_nodes or "as the recipe needs",
             "time": f"{args.time} min", "partition": args.partition or "default",
             "array parallelism": args.array_parallelism}
    print(p.format(measured, shown, shapes))
    if args.dry_run:
        if partition_error:  # the plan is still worth reading: say what submitting would refuse
            print(f"warning: submitting would fail here: {partition_error}")
        print("dry run: nothing submitted")
        return 0
    if partition_error:
        print(f"fourm-bench sweep: {partition_error}", file=sys.stderr)
        return 2
    try:
        submitted = submit_plan(p, args.launcher, shapes, **res)
    except ValueError as e:  # e.g. the sweep folder belongs to another launcher, or a run changed config
        print(f"fourm-bench sweep: {e}", file=sys.stderr)
        return 2
    print(f"submitted {len(submitted)} runs; manifest {mf.manifest_path(p.sweep_dir)}; "
          f"follow with: fourm-bench status {p.sweep_dir}")
    return 0
