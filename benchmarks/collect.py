"""Collecting run folders: `results.collect.collect` vs a naive reader, on the same synthetic run store.

The naive baseline is what one writes first: ``Run.config`` (pure-Python ``yaml.safe_load``), ``Run.metrics``,
``pd.json_normalize`` of config and metrics into a small frame per run, and one ``pd.concat`` at the end. Ours: the
libyaml loader, plain ``json``, column lists and a single DataFrame build.

    python -m benchmarks.collect [--runs 10000] [--baseline-runs 1000]

The baseline reads the first ``--baseline-runs`` folders only (it is slow); the ratio compares runs per second.
Folders are written directly in the run store's format (config.json, config.yaml, env.json, metrics.json, DONE) because
``open_run`` records the environment per run (git, torch), which would dominate setting up 10,000 folders.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from tqdm import tqdm

from fourm.runs import canonical_json, find_runs, run_id
from results.collect import collect
from transfer.tasks import tasks

# two metrics of each task with two (the registry's headline and extra metrics)
TASKS = {name: (*(h.metric for h in t.headline), *t.extra_metrics)[:2] for name, t in tasks().items()
         if len(t.headline) + len(t.extra_metrics) >= 2}


def make_store(root: Path, n: int) -> None:
    """``n`` finished transfer runs: 4 tasks x alphas x seeds, nested metrics with 3 evals each."""
    env = json.dumps({"git_sha": "0" * 40, "python": "3.11", "torch": "2.x", "host": "bench", "time": "t", "pid": 1})
    dump = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    tasks = list(TASKS)
    for i in tqdm(range(n), desc="write run store", unit="run", mininterval=0.5):
        task = tasks[i % len(tasks)]
        cfg = {
            "method": "4M",
            "model": {"size": "B", "name": "fm_base_12e_12d", "dim": 768, "depth": 12},
            "pretrain": {"alpha": round(0.1 * (1 + (i // 4) % 10), 2), "tokens": 1_000_000 * (1 + i // 40),
                         "modalities": ["rgb@224", "tok_depth@224", "caption"], "lr": 1e-4},
            "transfer": {"task": task, "init": f"/runs/pretrain/{i // 4:06d}/checkpoint-final.pt", "epochs": 10,
                         "lr": 5e-4, "layer_decay": 0.75},
            "seed": i % 3,
        }
        path = root / run_id(cfg)
        path.mkdir(parents=True)
        plain = json.loads(canonical_json(cfg))
        (path / "config.json").write_text(json.dumps(plain, indent=2, sort_keys=True))
        (path / "config.yaml").write_text(yaml.dump(plain, Dumper=dump, sort_keys=True))
        (path / "env.json").write_text(env)
        a, b = TASKS[task]
        evals = [{"step": s, "val/loss": 1.0 / s + i * 1e-6, f"val/{a}": 50.0 + s} for s in (1, 2, 3)]
        metrics = {a: 60.0 + (i % 7), b: 0.5, "train": {"loss": 0.3, "time_s": 12.0}, "evals": evals}
        (path / "metrics.json").write_text(json.dumps(metrics))
        (path / "DONE").write_text("t\n")


def naive_collect(root: Path, limit: int) -> pd.DataFrame:
    """The first version one writes: per-run frames with json_normalize, concatenated once."""
    frames = []
    for run in find_runs(root)[:limit]:
        if not run.done:
            continue
        cfg = pd.json_normalize(run.config)
        metrics = run.metrics
        evals = metrics.pop("evals", [])
        if evals:
            metrics.update({k: v for k, v in evals[-1].items() if k != "step"})
        flat = pd.json_normalize(metrics, sep="/").iloc[0]
        frame = pd.DataFrame({"run_id": run.id, "metric": flat.index, "value": flat.to_numpy(dtype=float)})
        frames.append(frame.merge(cfg.assign(run_id=run.id), on="run_id"))
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks.collect", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--baseline-runs", type=int, default=1_000)
    p.add_argument("--dir", help="where to build the run store (default: a temp dir, removed after)")
    args = p.parse_args([] if argv is None else argv)  # main() from another script must not read its sys.argv
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_collect_"))
    root = tmp / "runs"
    try:
        if not root.exists():
            make_store(root, args.runs)
        n = min(args.runs, len(os.listdir(root)))

        # CPU time next to wall time: on a shared machine the wall clock mostly measures the neighbours
        t0, c0 = time.perf_counter(), time.process_time()
        c = collect(root, progress=False)
        ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert c.done == n, (c.done, n)

        nb = min(args.baseline_runs, n)
        t0, c0 = time.perf_counter(), time.process_time()
        naive = naive_collect(root, nb)
        naive_s, naive_cpu = time.perf_counter() - t0, time.process_time() - c0

        # same numbers for the runs both read (last eval): the speed-up is not from reading less
        ours_sub = c.table[c.table["run_id"].isin(set(naive["run_id"]))]
        assert len(ours_sub) == len(naive), (len(ours_sub), len(naive))
        assert abs(ours_sub["value"].sum() - naive["value"].sum()) < 1e-6 * max(1.0, abs(naive["value"].sum()))

        ours_rate, naive_rate = n / ours_s, nb / naive_s
        print(f"collect: {n} runs, {len(c.table)} rows in {ours_s:.2f} s wall ({ours_cpu:.2f} s CPU) = "
              f"{ours_rate:,.0f} runs/s ({n / ours_cpu:,.0f} runs/CPU-s)")
        print(f"naive:   {nb} runs, {len(naive)} rows in {naive_s:.2f} s wall ({naive_cpu:.2f} s CPU) = "
              f"{naive_rate:,.0f} runs/s ({nb / naive_cpu:,.0f} runs/CPU-s)")
        print(f"ratio:   {ours_rate / naive_rate:.1f}x runs/s wall, {(n / ours_cpu) / (nb / naive_cpu):.1f}x per CPU-s "
              "(collect / naive)")
        return {"runs": n, "seconds": ours_s, "cpu_seconds": ours_cpu, "runs_per_s": ours_rate,
                "naive_runs_per_s": naive_rate, "ratio": ours_rate / naive_rate}
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
