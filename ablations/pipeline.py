"""Pipelines: an end-to-end recipe as a graph of jobs, run by the local launcher or on SLURM.

    fourm-bench pipeline RECIPE [--work W] [--out O] [--launcher local|slurm] [--set key=value ...] [--dry-run] [--wait]
    fourm-bench demo [--size full|tiny] [--launcher local|slurm] [--work W] [--out O]

A recipe (``ablations/pipelines/<name>.yaml``, or any YAML path) states the stages: the world (or an existing
4M-layout dataset), the WordPiece text tokenizer, the VQ-VAE tokenizers, the token shards, pretraining (one run per
model), a random-init checkpoint, the transfers (init x task x seed), the out-of-the-box run, generations, and a
report. :func:`expand` turns it into :class:`slurm.submit.Job` s with ``after`` dependencies; every job's run folder
is ``<work>/<stage>/<run id>`` (the hash of its config), so both launchers write the same folders and a rerun (on
either) redoes nothing that is DONE. The manifest and job logs are in ``<work>/pipeline-<launcher>``.

The local launcher runs jobs in the recipe's order as their parents finish, as many at once as their
``cpus_per_task`` fit in the machine's cores, and blocks until all have ended; ``--launcher slurm`` submits job
arrays with ``afterok`` dependencies and returns (``--wait`` follows them to the end).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fourm.runs import run_id
from slurm.submit import LAUNCHERS, Job, Resources

RECIPES = Path(__file__).resolve().parent / "pipelines"
ENTRIES = {"world": "slurm.jobs:world", "text_tokenizer": "slurm.jobs:text_tokenizer", "tokenizer": "slurm.jobs:tokenizer",
           "shards": "slurm.jobs:shards", "random_init": "slurm.jobs:random_init", "pretrain": "slurm.jobs:pretrain",
           "transfer": "slurm.jobs:transfer", "oob": "slurm.jobs:out_of_the_box", "generate": "slurm.jobs:generate",
           "report": "results.report:report", "labels": "slurm.jobs:labels",
           "vector_tokenizer": "slurm.jobs:vector_tokenizer", "mask_tokenizer": "slurm.jobs:mask_tokenizer"}
NOT_IDENTITY = ("runs_root", "resume")  # run_from_config leaves these out of a pretraining run's identity
RANDOM_INIT = "random_init"  # a transfer init naming the recipe's random-init checkpoint
PLACEHOLDER = re.compile(r"\{(world|layouts|text_tokenizer|tokenizer\.[a-z_]+)\}")


class RecipeError(ValueError):
    """A recipe that cannot be expanded: names the file, the key and what to do."""


@dataclass(frozen=True)
class Stage:
    kind: str  # a key of ENTRIES
    name: str  # what the progress lines and the dry run call it
    job: Job


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


def _get(recipe: dict, key: str, path: Path):
    value = recipe
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise RecipeError(f"{path}: key {key} is missing")
        value = value[part]
    return value


def _fill(text: str, paths: dict, where: str) -> str:
    """Replace ``{world}``, ``{layouts}``, ``{text_tokenizer}``, ``{tokenizer.<modality>}`` by the stage outputs."""
    def sub(m):
        if m.group(1) not in paths:
            raise RecipeError(f"{where}: {{{m.group(1)}}} names no output of this recipe (known: "
                              f"{', '.join('{' + k + '}' for k in sorted(paths))})")
        return paths[m.group(1)]

    return PLACEHOLDER.sub(sub, str(text))


def _resources(recipe: dict, kind: str) -> Resources:
    table = recipe.get("resources") or {}
    return Resources(**{**(table.get("default") or {}), **(table.get(kind) or {})})


def _check_tokenizer_keys(source: Path, key: str, spec: dict, vector: bool) -> None:
    """A vector or mask tokenizer's model keys, checked before any job runs (a typo would fail only in the job)."""
    import dataclasses

    from fourm.tokenizers.mlp_vqvae import MLPVQVAEConfig
    from fourm.tokenizers.vqvae import VQVAEConfig

    config = MLPVQVAEConfig if vector else VQVAEConfig
    known = {f.name for f in dataclasses.fields(config)} - {"dim", "modality"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise RecipeError(f"{source}: {key}: unknown keys {unknown}; known: steps, seed, batch_size, "
                          f"{'lr, ' if vector else ''}{', '.join(sorted(known))}")


def expand(recipe: dict, work: str | Path, out: str | Path, source: Path = Path("<recipe>")) -> list[Stage]:
    """The recipe's jobs in run order (each after the jobs it reads from); checks every config before returning."""
    from fourm.tokenizers.train import compose_config
    from transfer.run import make_config

    work, out = Path(work).expanduser().resolve(), Path(out).expanduser().resolve()
    stages: list[Stage] = []
    paths: dict[str, str] = {}
    ids: dict[str, str] = {}  # output name -> the run id that makes it

    def add(kind: str, name: str, config: dict, after=(), run_dir: Path | None = None) -> Path:
        run_dir = run_dir or work / kind / run_id(config)
        stages.append(Stage(kind, name, Job(str(run_dir), config, ENTRIES[kind], after=tuple(dict.fromkeys(after)),
                                            resources=_resources(recipe, kind), name=name)))
        return run_dir

    # the data: the synthetic world, or an existing 4M-layout dataset (+ its transfer layouts)
    if recipe.get("world"):
        w = recipe["world"]
        cfg = {"kind": "world", "image_size": int(w["image_size"]), "seed": int(w.get("seed", 0)),
               "splits": {k: int(v) for k, v in w["splits"].items()},
               "layout_splits": list(w.get("layout_splits", ["train", "val"]))}
        world_dir = add("world", "world", cfg)
        paths.update(world=str(world_dir / "world"), layouts=str(world_dir / "layouts"))
        ids["world"] = ids["layouts"] = world_dir.name
        split_sizes = cfg["splits"]
    else:
        data = _get(recipe, "data", source)
        paths.update(world=str(Path(_get(recipe, "data.root", source)).expanduser().resolve()),
                     layouts=str(Path(data.get("layouts") or data["root"]).expanduser().resolve()))
        split_sizes = {k: int(v) for k, v in (data.get("splits") or {}).items()}

    # text tokenizer: trained on the data's train captions, or a given tokenizer.json
    text = recipe.get("text_tokenizer") or {}
    if text.get("path"):
        paths["text_tokenizer"] = str(Path(text["path"]).expanduser().resolve())
    else:
        cfg = {"kind": "text_tokenizer", "world": paths["world"], "vocab_size": int(text.get("vocab_size", 30000)),
               "coord_bins": int(text.get("coord_bins", 1000))}
        d = add("text_tokenizer", "text tokenizer", cfg, after=[ids[k] for k in ("world",) if k in ids])
        paths["text_tokenizer"], ids["text_tokenizer"] = str(d / "text_tokenizer.json"), d.name

    # pseudo labels (4M-21 modalities), one job per labeler over the listed splits of the data
    from fourm.data.labeling import LABELERS

    lab = recipe.get("labels") or {}
    label_ids = {}  # modality folder -> the job writing it
    for folder, spec in (lab.get("labelers") or {}).items():
        spec = dict(spec or {})
        cfg = {"kind": "labels", "data": paths["world"], "splits": list(lab.get("splits", ["train", "val"])),
               "labeler": spec.pop("labeler", folder), "batch_size": int(spec.pop("batch_size", 16)), "options": spec}
        if cfg["labeler"] not in LABELERS:
            raise RecipeError(f"{source}: labels.labelers.{folder}: unknown labeler {cfg['labeler']!r} "
                              f"(known: {', '.join(sorted(LABELERS))})")
        d = add("labels", f"labels {folder}", cfg, after=[ids[k] for k in ("world",) if k in ids])
        label_ids[folder] = d.name

    def data_after(mod: str) -> list[str]:
        return [ids[k] for k in ("world",) if k in ids] + ([label_ids[mod]] if mod in label_ids else [])

    # VQ-VAE tokenizers, in the recipe's order (put the longest first: the local launcher starts jobs in order)
    toks = recipe.get("tokenizers") or {}
    token_modality = {}
    for mod, extra in (toks.get("modalities") or {}).items():
        overrides = [f"modality={mod}", f"data={paths['world']}", *toks.get("common", []), *(extra or [])]
        try:
            cfg = compose_config("train", [*overrides, "out=unused"])
        except Exception as e:  # hydra's errors name the override; say which recipe key holds it
            raise RecipeError(f"{source}: tokenizers.modalities.{mod}: {e}") from e
        cfg.pop("out")
        d = add("tokenizer", f"tokenizer {mod}", cfg, after=data_after(mod))
        paths[f"tokenizer.{mod}"], ids[f"tokenizer.{mod}"] = str(d), d.name
        token_modality[mod] = cfg["modality"]["token_modality"]
    # MLP VQ-VAEs of global embeddings, and the SAM-instance mask tokenizer (its tokens become sam_instance text)
    vec = recipe.get("vector_tokenizers") or {}
    for mod, extra in (vec.get("modalities") or {}).items():
        spec = {**(vec.get("common") or {}), **(extra or {})}
        cfg = {"kind": "vector_tokenizer", "data": paths["world"], "modality": mod, "steps": int(spec.pop("steps", 500)),
               "seed": int(spec.pop("seed", 0)), "batch_size": int(spec.pop("batch_size", 64)),
               "lr": float(spec.pop("lr", 2e-3)), "model": spec}
        _check_tokenizer_keys(source, f"vector_tokenizers.modalities.{mod}", spec, vector=True)
        d = add("vector_tokenizer", f"tokenizer {mod}", cfg, after=data_after(mod))
        paths[f"tokenizer.{mod}"], ids[f"tokenizer.{mod}"] = str(d), d.name
        token_modality[mod] = spec.get("token_modality", f"tok_{mod}")
    if recipe.get("mask_tokenizer"):
        spec = dict(recipe["mask_tokenizer"])
        cfg = {"kind": "mask_tokenizer", "data": paths["world"], "steps": int(spec.pop("steps", 300)),
               "seed": int(spec.pop("seed", 0)), "batch_size": int(spec.pop("batch_size", 32)), "model": spec}
        _check_tokenizer_keys(source, "mask_tokenizer", spec, vector=False)
        d = add("mask_tokenizer", "tokenizer sam_instance", cfg, after=data_after("sam_instance"))
        paths["tokenizer.sam_instance"], ids["tokenizer.sam_instance"] = str(d), d.name
        token_modality["sam_instance"] = "sam_instance"

    # token shards of the pretraining and validation splits; their file names are fixed by the split sizes
    sh = _get(recipe, "shards", source)
    splits, patterns = {}, {}
    for split in sh["splits"]:
        overrides = [f"data={paths['world']}", f"split={split}", "out=unused", *sh.get("common", []),
                     *[f"tokenizers.{m}={paths[f'tokenizer.{m}']}" for m in token_modality]]
        cfg = compose_config("encode", overrides)
        cfg.pop("out")
        cfg["data"] = str(Path(cfg["data"]).resolve())
        splits[split] = cfg
        n = split_sizes.get(split)
        if n is None:
            raise RecipeError(f"{source}: shards.splits has {split!r}, but the data's size of that split is not known "
                              f"(set world.splits.{split} or data.splits.{split})")
        n = min(n, cfg["max_samples"] or n)
        patterns[split] = "{}/{}-{{000000..{:06d}}}.tar".format("{shards}", split, math.ceil(n / cfg["samples_per_shard"]) - 1)
    cfg = {"kind": "shards", "splits": splits}
    shards_dir = work / "shards" / run_id(cfg)
    # what the shard files will be called (bookkeeping, not identity: it follows from the splits)
    cfg["_patterns"] = {k: v.replace("{shards}", str(shards_dir)) for k, v in patterns.items()}
    add("shards", "token shards", cfg, after=[ids[f"tokenizer.{m}"] for m in token_modality] + list(label_ids.values())
        + ([ids["world"]] if "world" in ids else []), run_dir=shards_dir)

    # pretraining, one run per model; the random-init checkpoint has the architecture of `random_init.like`
    from fourm.pretrain.loop import resolve

    pre = _get(recipe, "pretrain", source)
    common = [f"data.train={cfg['_patterns'][pre['train_split']]}", f"data.val={cfg['_patterns'][pre['val_split']]}",
              f"data.text_tokenizer={paths['text_tokenizer']}", f"runs_root={work / 'pretrain'}",
              *[_fill(o, paths, f"{source}: pretrain.common") for o in pre.get("common", [])]]
    pretrain_cfgs, pretrain_dirs = {}, {}
    for model, extra in pre["models"].items():
        try:
            full = resolve([f"model.name={model}", *common, *[_fill(o, paths, f"{source}: pretrain.models.{model}")
                                                              for o in (extra or [])]])
        except Exception as e:
            raise RecipeError(f"{source}: pretrain.models.{model}: {e}") from e
        identity = {k: v for k, v in full.items() if k not in NOT_IDENTITY}
        pretrain_cfgs[model] = identity
        pretrain_dirs[model] = work / "pretrain" / run_id(identity)
    parents = [shards_dir.name] + [ids[k] for k in ("text_tokenizer",) if k in ids]
    checkpoints = {}
    like = (recipe.get("random_init") or {}).get("like")
    if like:
        if like not in pretrain_cfgs:
            raise RecipeError(f"{source}: random_init.like={like!r} is not one of pretrain.models ({', '.join(pretrain_cfgs)})")
        d = add("random_init", f"random init ({like})", {"kind": "random_init", "pretrain": pretrain_cfgs[like]},
                after=parents)
        checkpoints[RANDOM_INIT], ids[RANDOM_INIT] = str(d / "model.safetensors"), d.name
    from ablations.plan import final_checkpoint

    for model, identity in pretrain_cfgs.items():
        add("pretrain", f"pretrain {model}", identity, after=parents, run_dir=pretrain_dirs[model])
        checkpoints[model], ids[model] = str(final_checkpoint(pretrain_dirs[model], identity)), pretrain_dirs[model].name

    # transfers: every init x task x seed, longest tasks first
    tr = recipe.get("transfer") or {}
    transfer_runs = {}
    tasks = tr.get("tasks") or {}
    order = sorted(tasks, key=lambda t: -float(tasks[t].get("cost_s", 1)))
    for label, init in (tr.get("inits") or {}).items():
        if init not in checkpoints:
            raise RecipeError(f"{source}: transfer.inits.{label}={init!r} is neither a pretrain model nor "
                              f"{RANDOM_INIT} (with random_init.like set)")
        for task in order:
            spec = tasks[task] or {}
            for seed in spec.get("seeds", [0]):
                ovr = [f"data_root={spec.get('data_root') or paths['layouts']}", f"method={label}",
                       f"model={tr['model']}", f"seed={seed}",
                       *[_fill(o, paths, f"{source}: transfer.tasks.{task}") for o in spec.get("overrides", [])],
                       *[_fill(o, paths, f"{source}: transfer.common") for o in tr.get("common", [])]]
                try:
                    tcfg = make_config(task, tr.get("profile", "tiny"), [*ovr, "init=random"])
                except Exception as e:
                    raise RecipeError(f"{source}: transfer.tasks.{task}: {e}") from e
                tcfg["transfer"]["init"] = checkpoints[init]  # a path that exists once its parent is DONE
                after = [ids[init]] + [ids[k] for k in ("layouts",) if k in ids]
                after += [ids[k] for k in ids if k.startswith("tokenizer.") and any(paths[k] in o for o in ovr)]
                key = task if seed == 0 else f"{task} (seed {seed})"
                d = add("transfer", f"transfer {key} [{label}]", tcfg, after=after)
                transfer_runs[str(d)] = {"task": task, "seed": seed, "label": label, "key": key}

    # out of the box and generations from one pretrained model
    ob = recipe.get("oob") or {}
    oob_dir = gen_dir = None
    if ob:
        model = ob["model"]
        common = [f"model={checkpoints[model]}", f"text_tokenizer={paths['text_tokenizer']}",
                  *[f"tokenizers.{m}={paths[f'tokenizer.{m}']}" for m, t in token_modality.items() if t != "sam_instance"]]
        from fourm.generation import oob

        args = [*common, f"data={paths['world']}", *[_fill(o, paths, f"{source}: oob.args") for o in ob.get("args", [])]]
        parsed = oob.parse_args(args)
        oob_dir = add("oob", f"out of the box ({model})", {**oob.run_config(parsed), "_args": args},
                      after=[ids[model], *[ids[k] for k in ("world",) if k in ids]])
        if ob.get("generate"):
            gargs = [*common, *[_fill(o, paths, f"{source}: oob.generate") for o in ob["generate"]]]
            gen_dir = add("generate", f"generations ({model})", {"kind": "generate", "args": gargs},
                          after=[ids[model], *[ids[k] for k in ("world",) if k in ids]])

    # the report reads the run folders above and writes the tables, plot and summary into `out`
    rep = recipe.get("report") or {}
    cfg = {"kind": "report", "out": str(out), "labels": list(tr.get("inits") or {}), "tasks": order,
           "task_order": list(tasks), "transfer": transfer_runs, "pretrain": {m: str(d) for m, d in pretrain_dirs.items()},
           "oob": str(oob_dir) if oob_dir else None, "generations": str(gen_dir) if gen_dir else None,
           "linear_probe_tasks": [t for t in tasks if "train.freeze_encoder=true" in (tasks[t] or {}).get("overrides", [])],
           "scaling_plot": bool(rep.get("scaling_plot", len(pretrain_dirs) > 1)), "recipe": str(source)}
    add("report", "report", cfg, after=[Path(s.job.run_dir).name for s in stages if s.kind in
                                         ("pretrain", "transfer", "oob", "generate")])
    return stages


def sweep_dir(work: str | Path, launcher: str) -> Path:
    return Path(work).expanduser().resolve() / f"pipeline-{launcher}"


def describe(stages: list[Stage]) -> str:
    """One line per job: kind, name, run folder, what it waits for, and its resources; DONE ones marked."""
    names = {Path(s.job.run_dir).name: s.name for s in stages}
    lines = []
    for i, s in enumerate(stages):
        done = (Path(s.job.run_dir) / "DONE").exists()
        r = s.job.resources
        res = f"{r.cpus_per_task} cpu" + (f", {r.gpus_per_node} gpu" if r.gpus_per_node else "")
        after = ", ".join(names.get(a, a) for a in s.job.after) if len(s.job.after) <= 3 else f"{len(s.job.after)} jobs"
        lines.append(f"{i + 1:3d}. {'DONE ' if done else '     '}{s.name:50s} {res:12s} after: {after or '-'}")
    return "\n".join(lines)


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
    print(f"{path.stem}: {len(stages)} jobs, run folders under {Path(work).resolve()}, report in {Path(out).resolve()}")
    print(describe(stages))
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
