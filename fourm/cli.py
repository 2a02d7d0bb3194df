"""`fourm-bench` — thin dispatch: each subcommand lives beside the code it runs and parses its own arguments.

A subcommand is a ``cli(argv: list[str]) -> int | None`` function, imported only when used so that
`fourm-bench info` stays fast and a missing optional dependency only affects its own command.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "info": ("fourm.info:cli", "versions of torch/mmcv/mmdet/mmseg/timm, mmcv ops, CUDA"),
    "parity": ("fourm.models.parity:cli", "check this implementation against the official 4M fixture"),
    "world": ("fourm.data.world:cli", "render the synthetic multimodal world (and dataset layouts)"),
    "label": ("ablations.arrays:label_cli", "pseudo-label an RGB folder into a modality folder (--parts: a job array)"),
    "tokenize": ("fourm.tokenizers.cli:cli", "train VQ-VAEs, encode shards, decode tokens"),
    "pretrain": ("fourm.pretrain.loop:cli", "pretrain a 4M model on token shards"),
    "transfer": ("transfer.run:cli", "fine-tune the 4M encoder on IN1K / ADE20K / NYUv2 / COCO"),
    "sweep": ("ablations.sweep:cli", "expand an ablation grid and launch it (SLURM or local)"),
    "status": ("slurm.status:cli", "state of every run of a sweep"),
    "generate": ("fourm.generation.cli:cli", "any-to-any generation from images, a picture per input"),
    "oob": ("fourm.generation.oob:cli", "out-of-the-box (zero-shot) evaluation of a pretrained 4M"),
    "results": ("results.cli:cli", "collect runs, write tables and plots"),
    "pipeline": ("ablations.pipeline:cli", "run an end-to-end recipe as a graph of jobs (local or SLURM)"),
    "demo": ("ablations.pipeline:demo_cli", "the end-to-end demo on the synthetic world (the demo recipe)"),
    "bench": ("benchmarks.run:cli", "throughput benchmarks (ratios against in-process baselines)"),
    "selfcheck": ("benchmarks.selfcheck:cli", "every accelerated path once (pretraining, compile, FSDP, transfer, generation, tokenizers, MFU): pass/fail and throughput"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: fourm-bench <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fourm-bench: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    if name == "tokenize" and rest[:1] == ["encode"]:  # encode as a job array (or in-process) decides there
        name, target, rest = "tokenize encode", "ablations.arrays:encode_cli", rest[1:]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"fourm-bench {name}: not available in this checkout ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    code = getattr(module, func_name)(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
