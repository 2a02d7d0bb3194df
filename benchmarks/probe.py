"""Frozen-feature probes from one feature cache vs each probe encoding its own features.

    fourm-bench bench probe [--model tiny] [--images 96] [--size 224]

A world of ``--images`` training and validation images in the IN1K layout; four probe runs of one random encoder
(linear grid, kNN, linear on 10%, kNN on 10%). Baseline: every run encodes its images (the cache removed before
each run, as a protocol without a shared cache would). Cached: the first run encodes, the other three read the cache.
Prints the wall time of both and the ratio, and the bootstrap time of a 50,000-image top-1 interval.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fourm-bench bench probe", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="encoder size (random init)")
    ap.add_argument("--images", type=int, default=96, help="images per split")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from fourm.data import world
    from fourm.data.layouts import write_layouts
    from fourm.models.factory import model_name
    from fourm.per_sample import bootstrap
    from transfer.configs import resolve
    from transfer.run import run_transfer

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    try:
        world.generate(str(work / "w"), num=args.images, size=args.size, seed=0, split="train")
        world.generate(str(work / "w"), num=args.images, size=args.size, seed=0, split="val")
        data = write_layouts(work / "w", work / "layouts", which=("in1k",))
        runs = [("linear", {}), ("knn", {}), ("linear", {"data.train_fraction": 0.1}), ("knn", {"data.train_fraction": 0.1})]
        blocks = "[1,2]" if args.model in ("pico", "nano") else "[1,4]"

        def sweep(root: Path, shared: bool) -> float:
            t0 = time.perf_counter()
            for protocol, extra in runs:
                if not shared:
                    shutil.rmtree(root / "_features", ignore_errors=True)
                linear = {"probe.blocks": blocks, "probe.epochs": "2"} if protocol == "linear" else {}
                cfg = resolve("in1k", "paper", {"init": "random", "model": model_name(args.model), "data_root": str(data),
                                                "runs_root": str(root), "protocol": protocol, "data.num_classes": "null",
                                                "train.image_size": str(args.size), "_runtime.num_workers": "0",
                                                **linear, **extra})
                run_transfer(cfg)
            return time.perf_counter() - t0

        base = sweep(work / "runs-baseline", shared=False)
        cached = sweep(work / "runs-cached", shared=True)
        print(f"4 probe runs, {args.model} encoder, {args.images} + {args.images} images at {args.size} px, 2 threads:")
        print(f"  each run encodes its own features: {base:.1f} s")
        print(f"  one feature cache:                 {cached:.1f} s   ({base / cached:.2f}x)")
        hits = {"c": (np.random.default_rng(0).random(50_000) < 0.8).astype(np.float64)}
        t0 = time.perf_counter()
        bootstrap(hits, {"kind": "mean", "values": "c", "scale": 100.0})
        print(f"  bootstrap 95% interval of top-1 over 50,000 images (1,000 resamples): {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
