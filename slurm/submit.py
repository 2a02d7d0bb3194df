"""Launch runs as SLURM job arrays (or local processes), generic over what a run does.

A *job* is a run folder, a resolved config and an entry ``"module:function"`` called on the worker as
``fn(config, run_dir)``. The entry resumes from the latest checkpoint in ``run_dir`` (never from pickled state),
writes its metrics and DONE through :mod:`fourm.runs`; this module only decides what to submit, where and when::

    jobs = [Job(run_dir, cfg, "fourm.pretrain.loop:run"), Job(eval_dir, cfg2, "transfer.run:run", after=(rid,))]
    submit("sweeps/s1", jobs, Resources(timeout_min=240, gpus_per_node=1))   # sbatch arrays, afterok deps
    resubmit("sweeps/s1")     # only runs neither DONE nor queued/running
    status("sweeps/s1")       # slurm.status (and wait)

The sweep folder holds ``manifest.json`` (run id -> run folder, config, entry, jobs) and ``logs/<job id>/``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from tqdm import tqdm

from slurm import manifest as mf
from slurm import scheduler
from slurm.lock import RunLock
from slurm.scheduler import JobState

LAUNCHERS = ("slurm", "local")
MIN_TIMEOUT_MIN = 15  # submitit treats a job with timeout_min <= 10 as timed out at once


@dataclass(frozen=True)
class Resources:
    """What each job of an array asks for. ``extra`` holds more sbatch flags, e.g. {"qos": "high"}.

    A job of ``nodes`` x ``tasks_per_node`` tasks runs one rank per task (one per GPU on GPU nodes); every rank calls
    the entry, which finds its rank in the SLURM environment (:mod:`fourm.distributed`), and rank 0 alone writes."""

    partition: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    array_parallelism: int = 256
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.nodes < 1 or self.tasks_per_node < 1:
            raise ValueError(f"Resources: nodes={self.nodes} and tasks_per_node={self.tasks_per_node} must be >= 1")
        if self.timeout_min < MIN_TIMEOUT_MIN:
            raise ValueError(f"Resources.timeout_min={self.timeout_min}: use >= {MIN_TIMEOUT_MIN} "
                             "(submitit treats jobs with timeout_min <= 10 as timed out)")

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One run to launch. ``after`` names run ids (in the same sweep) that must succeed first."""

    run_dir: str
    config: dict
    entry: str
    after: tuple[str, ...] = ()
    resources: Resources | None = None
    name: str = ""  # what progress lines call it (default: the run id)

    @property
    def run_id(self) -> str:
        return Path(self.run_dir).name


def _load_file(path: str):
    """A module from a ``.py`` file (an entry outside any installed package), imported once per process."""
    import importlib.util
    import sys as _sys

    name = "_entry_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    if name not in _sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or not os.path.isfile(path):
            raise ImportError(f"no such file {path}")
        module = importlib.util.module_from_spec(spec)
        _sys.modules[name] = module
        spec.loader.exec_module(module)
    return _sys.modules[name]


def resolve_entry(entry: str) -> Callable[[dict, str], Any]:
    """``"package.module:function"`` or ``"/path/to/file.py:function"`` -> the function; one clear error when it
    cannot be imported."""
    module_name, sep, func_name = entry.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"entry {entry!r}: expected 'package.module:function' or '/path/to/file.py:function'")
    try:
        module = _load_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"entry {entry!r}: cannot import {module_name} ({e}); workers import entries from the "
                          "installed packages or from a .py file they can read") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise AttributeError(f"entry {entry!r}: {module_name} has no function {func_name}")
    return fn


class RunEntry(submitit.helpers.Checkpointable):
    """What a worker runs: take the run folder's lock, then call the entry (unless the run is DONE).

    On preemption or timeout submitit calls ``checkpoint()``, which resubmits this same small object (entry name,
    config, run folder); the entry itself resumes from the checkpoint on disk.
    """

    def __init__(self, entry: str, config: dict, run_dir: str, watch_pid: int | None = None):
        self.entry = entry
        self.config = config
        self.run_dir = str(run_dir)
        self.watch_pid = watch_pid  # local launcher: end this job when the process that launched it is gone

    def __call__(self) -> dict:
        run_dir = Path(self.run_dir)
        if self.watch_pid:
            exit_with(self.watch_pid)
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        if rank > 0:
            # another rank of a multi-task (multi-GPU) job: rank 0 holds the run's lock and does the writing; a
            # requeue restarts every rank, each resuming from what rank 0 wrote
            if (run_dir / "DONE").exists():
                return {"run_dir": self.run_dir, "skipped": "done"}
            resolve_entry(self.entry)(self.config, self.run_dir)
            return {"run_dir": self.run_dir, "rank": rank}
        with RunLock(run_dir) as lock:
            if not lock.acquired:
                print(f"[slurm.submit] {run_dir} is locked by live job {lock.holder}: exiting without writing",
                      flush=True)
                return {"run_dir": self.run_dir, "skipped": "locked", "holder": lock.holder}
            if (run_dir / "DONE").exists():
                print(f"[slurm.submit] {run_dir} is already DONE: nothing to do", flush=True)
                return {"run_dir": self.run_dir, "skipped": "done"}
            resolve_entry(self.entry)(self.config, self.run_dir)
            return {"run_dir": self.run_dir, "done": (run_dir / "DONE").exists()}


def exit_with(pid: int, poll_s: float = 0.5) -> None:
    """End this process (exit code 1) as soon as process ``pid`` is gone.

    A local launcher killed with SIGKILL cannot stop its jobs; without this they would train on, orphaned, competing
    for the cores a rerun needs. A rerun sees such a job as FAILED (no result) and starts it again from its checkpoint.
    """
    import threading

    def watch():
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()


# --- launchers -----------------------------------------------------------------------------------------------------
class SlurmLauncher:
    """sbatch job arrays through submitit, chunked to the cluster's MaxArraySize."""

    name = "slurm"

    def __init__(self, log_dir: str | os.PathLike, python: str | None = None):
        self.log_dir = Path(log_dir)
        self.python = python or sys.executable  # the venv's python runs the workers

    def submit_array(self, entries: Sequence[RunEntry], res: Resources, dependency: str | None = None,
                     name: str = "fourm") -> list[dict]:
        """Submit one array per chunk; returns one {job_id, array_job_id, array_index, dependency} per entry."""
        ex = submitit.AutoExecutor(folder=self.log_dir / "%j", cluster="slurm", slurm_python=shlex.quote(self.python))
        extra = dict(res.extra)
        if dependency:
            extra.update(dependency=dependency, kill_on_invalid_dep="yes")
        params: dict[str, Any] = dict(name=name, timeout_min=res.timeout_min, cpus_per_task=res.cpus_per_task,
                                      nodes=res.nodes, tasks_per_node=res.tasks_per_node,
                                      slurm_array_parallelism=res.array_parallelism,
                                      slurm_additional_parameters=extra)
        if res.partition:
            params["slurm_partition"] = res.partition
        if res.gpus_per_node:
            params["gpus_per_node"] = res.gpus_per_node
        if res.mem_gb is not None:
            params["mem_gb"] = res.mem_gb
        ex.update_parameters(**params)
        chunk = scheduler.max_array_size()
        out = []
        for start in range(0, len(entries), chunk):
            with ex.batch():
                jobs = [ex.submit(e) for e in entries[start:start + chunk]]
            for j in jobs:
                base, _, index = j.job_id.partition("_")
                out.append({"job_id": j.job_id, "array_job_id": base if index else None,
                            "array_index": int(index) if index else None, "dependency": dependency})
        return out

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        return scheduler.job_states(job_ids)

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], check=False, capture_output=True, timeout=30)


class LocalLauncher:
    """The same semantics on a laptop: local processes, parents before children.

    Jobs start in the order they were submitted as soon as their parents are DONE, while the running jobs' CPUs
    (``Resources.cpus_per_task``) fit in ``cpus`` (default: this machine's cores) and at most ``array_parallelism``
    run; each job's torch uses ``cpus_per_task`` threads. Submitting blocks until every job has ended (a child whose
    parent failed is CANCELLED, never started).

    Each job is a process forked from one server that has imported torch and the mm libraries once (``forkserver``
    with a preload): a job starts in milliseconds instead of seconds of imports, in a fresh copy of that process, so
    no job sees another's state. Its stdout/stderr and result go where submitit puts them
    (``<log_dir>/<job id>/<job id>_0_{log.out,log.err,result.pkl}``), so `status` reads local and SLURM jobs alike.
    """

    name = "local"
    # the heavy libraries jobs use; the first job's entry module is preloaded too
    PRELOAD = ("torch", "timm", "mmengine.runner", "mmdet.models", "mmseg.models")

    def __init__(self, log_dir: str | os.PathLike, python: str | None = None, cpus: int | None = None):
        self.log_dir = Path(log_dir)
        self.python = python or sys.executable
        self.cpus = cpus or os.cpu_count() or 1

    def start(self, entry: RunEntry, res: Resources) -> "LocalJob":
        """Start one job now; returns its handle (``job_id`` is its pid)."""
        if res.nodes * res.tasks_per_node > 1:
            raise ValueError(f"the local launcher runs one task a job, not {res.nodes} x {res.tasks_per_node}: "
                             "run multi-rank jobs on SLURM, or alone under torchrun (pass --gpus-per-node 0 or 1)")
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        if self.python != sys.executable:
            ctx.set_executable(self.python)
        entry_module = entry.entry.partition(":")[0]
        ctx.set_forkserver_preload([*self.PRELOAD, entry_module])  # only read when the server starts (the first job)
        started = ctx.Event()
        proc = ctx.Process(target=_local_job, args=(entry, str(self.log_dir), res.cpus_per_task, started), daemon=False)
        proc.start()
        started.wait(60)  # the job has opened its log files under its pid
        return LocalJob(proc, self.log_dir)

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        return {j: local_job_state(self.log_dir, j) for j in job_ids}

    def cancel(self, job_ids: list[str]) -> None:
        for j in job_ids:
            try:
                os.kill(int(j), 15)
            except (ProcessLookupError, ValueError):
                pass


@dataclass
class _Paths:
    stdout: Path
    stderr: Path
    result: Path


class LocalJob:
    """A running local job: ``job_id``, ``paths``, ``done()``, ``cancel()`` (the parts of a submitit job used here)."""

    def __init__(self, proc, log_dir: Path):
        self.proc = proc
        self.job_id = str(proc.pid)
        self.paths = local_paths(log_dir, self.job_id)

    def done(self) -> bool:
        return not self.proc.is_alive()

    def cancel(self, check: bool = False) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)


def local_paths(log_dir: str | os.PathLike, job_id: str) -> _Paths:
    folder = Path(log_dir) / job_id
    return _Paths(folder / f"{job_id}_0_log.out", folder / f"{job_id}_0_log.err", folder / f"{job_id}_0_result.pkl")


def _local_job(entry: RunEntry, log_dir: str, threads: int, started) -> None:
    """A local job's process: output to its log files, ``threads`` torch threads, the result pickled as submitit does."""
    import traceback

    paths = local_paths(log_dir, str(os.getpid()))
    paths.stdout.parent.mkdir(parents=True, exist_ok=True)
    for fd, path in ((1, paths.stdout), (2, paths.stderr)):
        f = open(path, "a")
        os.dup2(f.fileno(), fd)
        f.close()
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    started.set()
    # tqdm's default lock holds multiprocessing semaphores; a forkserver child ends without running finalizers, so
    # the launcher's resource tracker would report every job's as leaked. A job draws its bars from one process.
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        outcome = ("success", entry())
    except BaseException:
        traceback.print_exc()
        outcome = ("error", traceback.format_exc())
    tmp = paths.result.with_name(f".{paths.result.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump((outcome[0], outcome[1]), f)
    os.replace(tmp, paths.result)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0 if outcome[0] == "success" else 1)


def local_job_state(log_dir: Path, job_id: str) -> JobState:
    """A local job's state from its pid and its result file (readable from any process)."""
    result = local_paths(log_dir, job_id).result
    if result.exists():
        with open(result, "rb") as f:
            outcome, _ = pickle.load(f)
        return JobState(job_id, "COMPLETED" if outcome == "success" else "FAILED")
    if job_id.startswith("cancelled"):
        return JobState(job_id, "CANCELLED", "dependency failed")
    try:
        os.kill(int(job_id), 0)
        with open(f"/proc/{job_id}/cmdline", "rb") as f:
            alive = b"forkserver" in f.read()
    except (ProcessLookupError, FileNotFoundError, ValueError):
        alive = False
    return JobState(job_id, "RUNNING") if alive else JobState(job_id, "FAILED", "process gone without a result")


def make_launcher(kind: str, log_dir: str | os.PathLike, python: str | None = None):
    if kind == "slurm":
        return SlurmLauncher(log_dir, python)
    if kind == "local":
        return LocalLauncher(log_dir, python)
    raise ValueError(f"launcher {kind!r}: choose one of {', '.join(LAUNCHERS)}")


# --- submission ----------------------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _levels(rids: list[str], runs: dict) -> list[list[str]]:
    """Topological levels of the runs to submit: a run comes after those of its parents also being submitted."""
    todo, levels = set(rids), []
    while todo:
        level = sorted(r for r in todo if not set(runs[r]["after"]) & todo)
        if not level:
            raise ValueError(f"dependency cycle among runs {sorted(todo)} (check Job.after)")
        levels.append(level)
        todo -= set(level)
    return levels


def _is_done(entry: dict) -> bool:
    return (Path(entry["run_dir"]) / "DONE").exists()


def _plan(data: dict, launcher) -> tuple[list[str], dict[str, JobState]]:
    """Runs to (re)submit: not DONE and their latest job not queued/running. Also returns the latest jobs' states."""
    runs = data["runs"]
    latest = {rid: mf.latest_job(e) for rid, e in runs.items() if not _is_done(e) and mf.latest_job(e)}
    states = launcher.states([j["job_id"] for j in latest.values()])
    todo = [rid for rid, e in runs.items() if not _is_done(e)
            and not (rid in latest and states[latest[rid]["job_id"]].active)]
    return todo, states  # in submission order: the local launcher starts jobs in it


def _submit_planned(sweep_dir: Path, data: dict, todo: list[str], states: dict[str, JobState], launcher) -> list[str]:
    runs = data["runs"]
    if launcher.name == "local":
        return _run_local(sweep_dir, data, todo, launcher)
    new_ids: dict[str, str] = {}
    for level in _levels(todo, runs):
        groups: dict[tuple[str, str | None], list[str]] = defaultdict(list)
        for rid in level:
            deps = []
            for parent in runs[rid]["after"]:
                if _is_done(runs[parent]):
                    continue
                deps.append(new_ids.get(parent) or mf.latest_job(runs[parent])["job_id"])
            groups[(json.dumps(runs[rid]["resources"], sort_keys=True),
                    "afterok:" + ":".join(deps) if deps else None)].append(rid)
        for (res_json, dependency), rids in groups.items():
            res = Resources(**json.loads(res_json))
            entries = [RunEntry(runs[r]["entry"], runs[r]["config"], runs[r]["run_dir"]) for r in rids]
            for rid, rec in zip(rids, launcher.submit_array(entries, res, dependency, name=sweep_dir.name)):
                rec["submitted"] = _now()
                runs[rid]["jobs"].append(rec)
                new_ids[rid] = rec["job_id"]
        mf.save(sweep_dir, data)  # after each level: what was submitted is never forgotten
    return sorted(new_ids)


def _run_local(sweep_dir: Path, data: dict, todo: list[str], launcher: LocalLauncher) -> list[str]:
    """Run the planned jobs as local processes, parents first, in submission order, within the CPU budget; blocks.

    A parent still running from an earlier launch is waited for; a parent that ended without DONE cancels its
    children, as ``afterok`` does. Interrupted (Ctrl-C, SIGTERM), it cancels the jobs it started."""
    runs = data["runs"]
    waiting = list(todo)
    running: dict[str, Any] = {}

    def active_elsewhere(rid: str) -> bool:  # queued/running from an earlier launch of this sweep
        job = mf.latest_job(runs[rid])
        return bool(job) and rid not in running and launcher.states([job["job_id"]])[job["job_id"]].active

    def used_cpus() -> int:
        return sum(Resources(**runs[r]["resources"]).cpus_per_task for r in running)

    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        with tqdm(total=len(todo), desc=f"local {sweep_dir.name}", unit="run") as bar:
            while waiting or running:
                for rid, job in list(running.items()):
                    if job.done():
                        del running[rid]
                        bar.update(1)
                        name = runs[rid].get("name", rid)
                        if _is_done(runs[rid]):
                            tqdm.write(f"[local] done: {name}")
                        else:
                            err = job.paths.stderr
                            log = err if err.exists() and err.stat().st_size else job.paths.stdout
                            tqdm.write(f"[local] FAILED: {name} ended without DONE; its output is in {log}")
                for rid in list(waiting):
                    parents = [p for p in runs[rid]["after"] if not _is_done(runs[p])]
                    if any(p in running or p in waiting or active_elsewhere(p) for p in parents):
                        continue
                    if parents:  # a parent ended without DONE: the child never starts, as with afterok
                        waiting.remove(rid)
                        runs[rid]["jobs"].append({"job_id": f"cancelled-{rid}", "array_job_id": None,
                                                  "array_index": None, "dependency": "afterok:" + ":".join(parents),
                                                  "submitted": _now()})
                        bar.update(1)
                        continue
                    res = Resources(**runs[rid]["resources"])
                    if running and (len(running) >= res.array_parallelism
                                    or used_cpus() + res.cpus_per_task > launcher.cpus):
                        break  # in order: a job never overtakes an earlier one that waits for CPUs
                    waiting.remove(rid)
                    job = launcher.start(RunEntry(runs[rid]["entry"], runs[rid]["config"], runs[rid]["run_dir"],
                                                  watch_pid=os.getpid()), res)
                    running[rid] = job
                    runs[rid]["jobs"].append({"job_id": job.job_id, "array_job_id": None, "array_index": None,
                                              "dependency": None, "submitted": _now()})
                    mf.save(sweep_dir, data)
                time.sleep(0.2)
    except BaseException:
        for job in running.values():
            job.cancel(check=False)
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        mf.save(sweep_dir, data)
    return sorted(todo)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def submit(sweep_dir: str | os.PathLike, jobs: Sequence[Job], resources: Resources | None = None,
           launcher: str = "slurm", python: str | None = None) -> list[str]:
    """Add jobs to the sweep's manifest, then submit every run of the sweep that is neither DONE nor queued/running.

    Returns the run ids submitted now (runs already queued or DONE are left alone: submitting twice is safe). With ``launcher="local"`` it returns once every job has ended.
    """
    sweep_dir = Path(sweep_dir)
    resources = resources or Resources()
    with mf.locked(sweep_dir):
        path = mf.manifest_path(sweep_dir)
        data = mf.load(path) if path.exists() else mf.empty(sweep_dir, launcher)
        if data["launcher"] != launcher:
            raise ValueError(f"{path}: this sweep was launched with launcher={data['launcher']!r}, not {launcher!r}")
        ids = {j.run_id for j in jobs} | set(data["runs"])
        for j in jobs:
            resolve_entry(j.entry)  # fail here, not on a worker
            missing = [p for p in j.after if p not in ids]
            if missing:
                raise ValueError(f"job {j.run_id}: after={missing} are not runs of this sweep ({sweep_dir})")
            res = dataclasses.asdict(j.resources or resources)
            old = data["runs"].get(j.run_id)
            if old and old["config"] != json.loads(json.dumps(j.config, default=str)):
                raise ValueError(f"{path}: run {j.run_id} is already in this sweep with a different config; "
                                 "a run folder holds one config")
            Path(j.run_dir).mkdir(parents=True, exist_ok=True)
            data["runs"][j.run_id] = {"run_dir": str(Path(j.run_dir).resolve()), "entry": j.entry,
                                      "config": j.config, "after": list(j.after), "resources": res,
                                      "name": j.name or j.run_id,
                                      "jobs": old["jobs"] if old else []}
        mf.save(path, data)
        runner = make_launcher(launcher, data["log_dir"], python)
        todo, states = _plan(data, runner)
        return _submit_planned(sweep_dir, data, todo, states, runner)


def resubmit(sweep_dir_or_manifest: str | os.PathLike, python: str | None = None) -> list[str]:
    """Submit again every run that is neither DONE nor queued/running; returns the run ids submitted."""
    path = mf.manifest_path(sweep_dir_or_manifest)
    with mf.locked(path.parent):
        data = mf.load(path)
        launcher = make_launcher(data["launcher"], data["log_dir"], python)
        todo, states = _plan(data, launcher)
        return _submit_planned(path.parent, data, todo, states, launcher)
