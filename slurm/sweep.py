"""`fourm-bench sweep GRID`: expand an ablation grid, validate every point, submit what is not DONE and not queued.

    fourm-bench sweep GRID [--launcher slurm|local] [--dry-run] [--partition P] [--gpus N] [--time MIN]
                           [--array-parallelism K] [--set key=value ...] [--sweep-dir D] [--runs-root R]

Each point pretrains (one SLURM array task) and is then evaluated on the grid's transfer tasks (jobs ``afterok`` its
pretraining job, ``init`` = the pretraining run's final checkpoint, whose path is fixed by the config). Run folders are
``<runs-root>/{pretrain,transfer}/<run id>`` (the id hashes the resolved config), the sweep folder holds the manifest
and the job logs; `fourm-bench status <sweep folder>` shows the runs, `fourm-bench results collect <runs-root>` the
results. Submitting again submits only runs neither DONE nor queued/running. ``--launcher local`` runs the jobs as
local processes (parents first) and returns when they have ended; ``slurm`` returns once the manifest is written.

GPU-hours estimate (printed by --dry-run): pretraining GPU-seconds = tokens / (tokens/s per GPU). Unless measured
numbers are given with ``--tokens-per-s SIZE=N``, tokens/s per GPU is *assumed* from FLOPs: 6 x 12 d^2 x (E + D) / 2
FLOPs per token (each input token crosses the encoder, each target token the decoder), at 30% of an A100's 312
bf16 TFLOP/s. Transfer evaluations are *assumed* from per-task figures for ViT-B under the paper protocols
(``TRANSFER_GPU_HOURS_B``), scaled by encoder FLOPs per token; tiny-profile runs count as 0.
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
from fourm.models.factory import SIZES
from slurm import manifest as mf
from slurm.submit import LAUNCHERS, Job, Resources

ENTRIES = {"pretrain": "slurm.jobs:pretrain", "transfer": "slurm.jobs:transfer"}
PEAK_FLOPS = 312e12  # A100 bf16 dense
MFU = 0.30
TRANSFER_GPU_HOURS_B = {"in1k": 40.0, "coco": 120.0, "ade20k": 16.0, "nyuv2_depth": 2.0, "nyuv2_semseg_rgbd": 2.0}
DEFAULT_MAX_ARRAY = 1001  # SLURM's default MaxArraySize, when no cluster answers


def _size(model_name: str) -> str:
    parts = model_name.split("_")
    return parts[1] if len(parts) > 1 and parts[1] in SIZES else "base"


def assumed_tokens_per_s(size: str) -> float:
    """Training tokens/s per A100 from FLOPs (see the module docstring)."""
    d, _, e, dd = SIZES[size]
    return MFU * PEAK_FLOPS / (6 * 12 * d * d * (e + dd) / 2)


def gpu_hours(run: PlannedRun, measured: dict[str, float]) -> float:
    """Estimated GPU-hours of one planned run."""
    size = _size(run.model)
    if run.kind == "pretrain":
        return run.tokens / measured.get(size, assumed_tokens_per_s(size)) / 3600
    if run.profile != "paper":
        return 0.0
    d, _, e, _ = SIZES[size]
    base_d, _, base_e, _ = SIZES["base"]
    return TRANSFER_GPU_HOURS_B.get(run.task, 0.0) * (d * d * e) / (base_d * base_d * base_e)


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

    def format(self, measured: dict[str, float] | None = None, resources: dict | None = None) -> str:
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
            lines.append(f"  arrays: transfer {len(tra)} jobs in {len(parents)} array(s) (one per pretraining run); "
                         f"{with_dep} afterok a pretraining job, {len(tra) - with_dep} without dependency")
        if resources:
            lines.append("  resources: " + ", ".join(f"{k} {v}" for k, v in resources.items()))
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


def resources_for(kind: str, partition: str | None, gpus: int, time_min: int, array_parallelism: int,
                  cpus_per_task: int, mem_gb: float | None) -> Resources:
    """Pretraining gets ``gpus`` GPUs and as many tasks (one rank per GPU, distributed env from SLURM);
    a transfer evaluation runs on one GPU."""
    n = gpus if kind == "pretrain" else min(gpus, 1)
    extra = {"ntasks_per_node": n} if n > 1 else {}
    return Resources(partition=partition, gpus_per_node=n, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                     timeout_min=time_min, array_parallelism=array_parallelism, extra=extra)


def submit_plan(p: SweepPlan, launcher: str = "slurm", **res) -> list[str]:
    """Submit every run of the plan that is neither DONE nor queued (the whole plan goes into the manifest)."""
    from slurm.submit import submit

    if launcher == "slurm":
        _cancel_orphans(p.sweep_dir)
    jobs = [Job(r.run_dir, r.config, ENTRIES[r.kind], after=tuple(a for a in r.after),
                resources=resources_for(r.kind, **res)) for r in p.runs]
    return submit(p.sweep_dir, jobs, resources_for("pretrain", **res), launcher=launcher)


def cli(argv: list[str]) -> int:
    """`fourm-bench sweep GRID ...` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="fourm-bench sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help=f"a grid YAML or a shipped grid: {', '.join(grid_names())}")
    ap.add_argument("--launcher", choices=LAUNCHERS, default="slurm")
    ap.add_argument("--dry-run", action="store_true", help="print the job plan and submit nothing")
    ap.add_argument("--partition")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs (and tasks) per pretraining job; transfers use 1")
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
        res = dict(partition=args.partition, gpus=args.gpus, time_min=args.time,
                   array_parallelism=args.array_parallelism, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb)
        resources_for("pretrain", **res)  # bad resources fail before the grid is expanded
        p = make_plan(args.grid, args.set, args.sweep_dir, args.runs_root, args.launcher)
    except (GridError, ValueError) as e:
        print(f"fourm-bench sweep: {e}", file=sys.stderr)
        return 2
    shown = {"gpus/pretrain job": args.gpus, "time": f"{args.time} min", "partition": args.partition or "default",
             "array parallelism": args.array_parallelism}
    print(p.format(measured, shown))
    if args.dry_run:
        print("dry run: nothing submitted")
        return 0
    try:
        submitted = submit_plan(p, args.launcher, **res)
    except ValueError as e:  # e.g. the sweep folder belongs to another launcher, or a run changed config
        print(f"fourm-bench sweep: {e}", file=sys.stderr)
        return 2
    print(f"submitted {len(submitted)} runs; manifest {mf.manifest_path(p.sweep_dir)}; "
          f"follow with: fourm-bench status {p.sweep_dir}")
    return 0
