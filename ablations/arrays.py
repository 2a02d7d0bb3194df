"""`fourm-bench label` and `fourm-bench tokenize encode` as job arrays over ranges of a dataset (SLURM or local).

    fourm-bench label --in /data/cc12m/train --labeler dpt_depth --checkpoint dpt_depth.safetensors \
        --parts 256 --launcher slurm --gpus 1 --cpus 8 --timeout-min 720 [--gpu-s-per-image 0.0026] [--dry-run]
    fourm-bench tokenize encode data=/data/cc12m split=train out=/data/cc12m_tok tokenizers.depth=... \
        --parts 64 --launcher slurm --gpus 1 [--dry-run]

Each task is one run of the pipeline's ``labels`` / ``shards`` stage (:mod:`ablations.stages`) over its contiguous
range of images (labels) or shards (encode), with its own run folder under ``--work``; outputs are written per file
(labels) or per shard (encode) and kept when already there; the same command again submits only the tasks neither
DONE nor queued, so a task that failed runs again alone (``fourm-bench status <work>/<kind>-<launcher>`` shows them).
An encode array ends with one job, after every task, that writes the index. ``--dry-run`` prints the tasks and the
GPU-hours: ``--gpu-s-per-image`` x images where given, else the reservation (GPUs x time limit). Without ``--parts`` /
``--launcher`` / ``--dry-run`` both commands run in this process.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablations.pipeline import describe, gpu_hours
from ablations.stages import PlannedStage
from fourm.runs import run_id
from slurm.submit import LAUNCHERS, Job, Resources

ARRAY_FLAGS = ("--parts", "--launcher", "--dry-run")


def _array_parser(prog: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog=prog, add_help=False)
    g = p.add_argument_group("job array (SLURM or local)")
    g.add_argument("--parts", type=int, default=1, help="array tasks, each over a contiguous range")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local")
    g.add_argument("--work", default=None, help="run folders and the array's manifest (default: runs/<command>)")
    g.add_argument("--dry-run", action="store_true", help="print the tasks and GPU-hours; submit nothing")
    g.add_argument("--wait", action="store_true", help="slurm: wait until every task has ended")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per task")
    g.add_argument("--cpus", type=int, default=1, help="CPUs per task")
    g.add_argument("--mem-gb", type=float, default=None)
    g.add_argument("--timeout-min", type=int, default=60)
    g.add_argument("--partition", default=None)
    g.add_argument("--gpu-s-per-image", type=float, default=None,
                   help="GPU-seconds per image, for the dry run's GPU-hours estimate")
    return p


def _resources(args) -> Resources:
    return Resources(partition=args.partition, gpus_per_node=args.gpus, cpus_per_task=args.cpus, mem_gb=args.mem_gb,
                     timeout_min=args.timeout_min)


def _launch(kind: str, stages: list[PlannedStage], args, prog: str) -> int:
    from slurm.submit import submit

    work = Path(args.work or f"runs/{kind}").expanduser().resolve()
    print(f"{prog}: {len(stages)} jobs, run folders under {work}")
    print(describe(stages))
    print(gpu_hours(stages))
    if args.dry_run:
        print("dry run: nothing submitted")
        return 0
    sweep = work / f"{kind}-{args.launcher}"
    submitted = submit(sweep, [s.job for s in stages], launcher=args.launcher)
    if args.launcher == "slurm" and args.wait:
        from slurm import status as st

        st.wait(sweep)
    not_done = [s.name for s in stages if not (Path(s.job.run_dir) / "DONE").exists()]
    if args.launcher == "local" or args.wait:
        if not_done:
            names = ", ".join(not_done[:3]) + (f" and {len(not_done) - 3} more" if len(not_done) > 3 else "")
            print(f"{prog}: {len(not_done)} tasks did not finish ({names}); see "
                  f"`fourm-bench status {sweep}`; the same command again runs only those", file=sys.stderr)
            return 1
        print(f"{prog}: every task DONE ({len(submitted)} run now)")
        return 0
    print(f"submitted {len(submitted)} jobs; follow with: fourm-bench status {sweep}")
    return 0


def _shard_units(path: str) -> list[str]:
    from fourm.data import official_layout as ol

    try:
        return list(ol.parse(path).units)
    except ol.DataError as e:
        raise FileNotFoundError(str(e)) from None


def _images_in(path: str, unit: str, folder: str = "rgb") -> int:
    """Samples in one shard of a modality folder (the first: the dry run's estimate takes every shard to hold as
    many)."""
    from fourm.data import official_layout as ol

    src = ol.parse(path, check=False)
    return sum(1 for _ in ol.read_unit(src, unit, [folder]))


def _input_shards(path: str) -> list[str]:
    """The shards of a per-modality shard path; [] for a folder."""
    from fourm.data.official_layout import is_shard_path

    return _shard_units(path) if is_shard_path(path) else []


def label_cli(argv: list[str]) -> int:
    """``fourm-bench label``: in this process, or as an array with ``--parts`` / ``--launcher`` / ``--dry-run``."""
    from fourm.data import labeling

    prog = "fourm-bench label"
    if argv[:1] != ["convert"] and any(a in ("-h", "--help") for a in argv):
        _array_parser(prog, labeling.build_parser(prog)).print_help()
        return 0
    if argv[:1] == ["convert"] or not any(a.split("=")[0] in ARRAY_FLAGS for a in argv):
        return labeling.cli(argv)
    from fourm.configs import parse_cli

    args = parse_cli(_array_parser(prog, labeling.build_parser(prog)), argv)
    try:
        if args.part:
            raise ValueError("--part and --parts: --parts makes the tasks, each with its own part")
        if args.parts < 1:
            raise ValueError(f"--parts {args.parts}: at least 1")
        options = labeling.labeler_options(args)
        if args.labeler not in labeling.LABELERS:
            raise KeyError(f"unknown labeler {args.labeler!r}; registered: {sorted(labeling.LABELERS)}")
        labeling.check_weights(args.labeler, options.get("checkpoint"))  # a wrong file fails here, not in 256 tasks
        if labeling.is_shard_path(args.in_dir):  # per-modality RGB shards: tasks over ranges of shards
            units = _shard_units(args.in_dir)
            per_shard = _images_in(args.in_dir, units[0])
            items, count = units, (lambda part: per_shard * len(part))
        else:
            rgb = labeling.rgb_folder(args.in_dir)
            items, count = labeling.list_images(rgb), len
            if not items:
                raise FileNotFoundError(f"{rgb}: no images ({', '.join(labeling.IMAGE_EXTS)}) to label")
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    work = Path(args.work or "runs/label").expanduser().resolve()
    if labeling.is_shard_path(args.in_dir):
        where = {"shards": args.in_dir}
    else:
        split = Path(args.in_dir).expanduser().resolve()
        where = {"data": str(split.parent), "splits": [split.name]}
    base = {"kind": "labels", **where, "labeler": args.labeler,
            "batch_size": args.batch_size, "on_bad_image": args.on_bad_image, "options": options,
            **({"out": str(Path(args.out).expanduser().resolve())} if args.out else {})}
    stages = []
    for i in range(args.parts):
        cfg = {**base, **({"part": [i, args.parts]} if args.parts > 1 else {})}
        if args.gpu_s_per_image is not None:
            cfg["_cost_s"] = args.gpu_s_per_image * count(labeling.part_of(items, (i, args.parts)))
        name = f"label {args.labeler}" + (f" [{i + 1}/{args.parts}]" if args.parts > 1 else "")
        job = Job(str(work / "labels" / run_id(cfg)), cfg, "ablations.stages:labels", resources=_resources(args),
                  name=name)
        stages.append(PlannedStage("labels", name, job))
    return _launch("label", stages, args, prog)


def encode_cli(argv: list[str]) -> int:
    """``fourm-bench tokenize encode``: in this process, or as an array of shard ranges plus the index job."""
    from fourm.tokenizers import encode

    if any(a in ("-h", "--help") for a in argv):
        encode.cli(["--help"])
        print()
        _array_parser("fourm-bench tokenize encode", argparse.ArgumentParser(
            prog="fourm-bench tokenize encode key=value ...", add_help=False)).print_help()
        return 0
    if not any(a.split("=")[0] in ARRAY_FLAGS for a in argv):
        return encode.cli(argv)
    from fourm.tokenizers.train import compose_config

    prog = "fourm-bench tokenize encode"
    args, overrides = _array_parser(prog).parse_known_args(argv)
    print_config = "--print-config" in overrides
    overrides = [a for a in overrides if a != "--print-config"]
    try:
        cfg = compose_config("encode", overrides)
        if cfg.get("part"):
            raise ValueError("part= and --parts: --parts makes the tasks, each with its own part")
        if args.parts < 1:
            raise ValueError(f"--parts {args.parts}: at least 1")
        out = str(Path(cfg.pop("out")).expanduser().resolve())
        shards = _input_shards(cfg["data"])
        if not shards:
            cfg["data"] = str(Path(cfg["data"]).expanduser().resolve())
        # local tokenizer paths absolute (a task may start elsewhere); Hugging Face ids as they are
        cfg["tokenizers"] = {k: (str(Path(v).resolve()) if v is not None and Path(v).exists() else v)
                             for k, v in cfg["tokenizers"].items()}
        encode.load_tokenizers(cfg["tokenizers"], cfg.get("official_image_size") or 224)  # bad tokenizers fail here
        if shards:  # per-modality input shards: every shard taken to hold as many samples as the first
            n = len(shards) * _images_in(cfg["data"], shards[0], folder=[m for m, v in cfg["tokenizers"].items() if v][0])
        else:
            from fourm.tokenizers.modality_io import list_stems, split_root

            stems = list_stems(split_root(cfg["data"], cfg["split"]), [m for m, v in cfg["tokenizers"].items() if v])
            n = min(len(stems), cfg["max_samples"] or len(stems))
    except Exception as e:  # hydra, tokenizer and data errors all name what is wrong
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    splits = {cfg["split"]: cfg}
    work = Path(args.work or "runs/encode").expanduser().resolve()
    stages, parts = [], []
    for i in range(args.parts if args.parts > 1 else 0):
        part = {"kind": "shards", "splits": splits, "part": [i, args.parts], "out": out}
        if args.gpu_s_per_image is not None:
            part["_cost_s"] = args.gpu_s_per_image * n / args.parts
        job = Job(str(work / "shards" / run_id(part)), part, "ablations.stages:shards", resources=_resources(args),
                  name=f"encode {cfg['split']} [{i + 1}/{args.parts}]")
        stages.append(PlannedStage("shards", job.name, job))
        parts.append(job.run_id)
    final = {"kind": "shards", "splits": splits, "out": out}
    if args.gpu_s_per_image is not None and args.parts == 1:
        final["_cost_s"] = args.gpu_s_per_image * n
    job = Job(str(work / "shards" / run_id(final)), final, "ablations.stages:shards", after=tuple(parts),
              resources=_resources(args), name=f"encode {cfg['split']}" + (" (index)" if parts else ""))
    stages.append(PlannedStage("shards", job.name, job))
    if print_config:
        from fourm.configs import format_configs

        print(format_configs((f"{s.name} -> {s.job.run_dir}", s.job.config) for s in stages))
        return 0
    return _launch("encode", stages, args, prog)
