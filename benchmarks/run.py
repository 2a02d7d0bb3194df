"""`fourm-bench bench NAME [args...]`: run one throughput benchmark (each prints a ratio against an in-process baseline).

    fourm-bench bench                      # list them
    fourm-bench bench train_step --model fm_base_12e_12d_swiglu_nobias
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "world": ("benchmarks.world:cli", "world generator images/s vs a per-pixel renderer"),
    "masking": ("benchmarks.masking:main", "batch-vectorised 4M masking vs a per-sample loop"),
    "tokenizers": ("benchmarks.tokenizers:cli", "VQ-VAE training on the world vs trivial baselines; --official: released tokenizers' encode/decode img/s"),
    "train_step": ("benchmarks.train_step:main", "FourM train step vs a naive reference (tokens/s)"),
    "transfer": ("benchmarks.transfer:cli", "classification fine-tune step vs simpler baselines"),
    "collect": ("benchmarks.collect:main", "collecting 10,000 run folders vs a naive reader"),
    "generation": ("benchmarks.generation:main", "KV-cached captions and batched guidance vs the official computation"),
    "mfu": ("benchmarks.mfu:main", "FLOPs of a 4M train step (checked against torch's counter), tokens/s, MFU on GPUs"),
    "sweep": ("benchmarks.sweep:main", "planning a 1,000-point grid (dry run) vs one hydra compose per config"),
    "data": ("benchmarks.data:main", "streaming reader samples/s by workers; memory and first step at two dataset sizes 16x apart"),
    "precision": ("benchmarks.precision:main", "bf16 autocast vs fp32 train steps on this CPU: speed and loss drift"),
    "probe": ("benchmarks.probe:main", "four frozen-feature probes from one feature cache vs each encoding its own; bootstrap time"),
    "labels": ("benchmarks.labels:main", "the 4M-7 labellers: img/s at the released size; output vs the world's ground truth and a baseline"),
    "steering": ("benchmarks.steering:main", "4M-21: RGB generated from metadata / a palette vs the world's spread"),
}


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, (_, help_) in BENCHMARKS.items():
            print(f"  {name:<11} {help_}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    if "--print-config" in rest:  # what the benchmark would run with: its entry and arguments
        print(f"benchmark: {name}\nentry: {BENCHMARKS[name][0]}\nargs: {[a for a in rest if a != '--print-config']}")
        return 0
    module, func = BENCHMARKS[name][0].split(":")
    result = getattr(importlib.import_module(module), func)(rest)
    return result if isinstance(result, int) else 0
