"""The stages of a job graph: each kind of job a pipeline or a sweep runs, in one place with its recipe schema, its
defaults and its body.

A :class:`StageKind` has

* ``plan(recipe, plan)``: reads its section of a pipeline recipe (the keys and defaults below), checks it, and adds
  its jobs to the :class:`Plan` (``plan.add``), reading what earlier stages planned (``plan.paths``, ``plan.ids``);
* ``run(config, run_dir)``: the job's body on a worker (entry ``ablations.stages:<kind>``), called with the run
  folder's lock held; it resumes from what is on disk and writes ``metrics.json`` and ``DONE``.

Stages plan in registration order, which is also the order the local launcher starts ready jobs in. Register a new
kind with :func:`register_stage`; :mod:`ablations.pipeline` and :mod:`ablations.sweep` know no stage by name.

Every job's run folder is ``<work>/<kind>/<run id>``; each body records ``job_start`` (job id, pid, restart count)
in the run's log.jsonl, so a run's history shows which job wrote what.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Callable

from fourm.runs import Run, run_id
from slurm.submit import Job, Resources

RANDOM_INIT = "random_init"  # a transfer init naming the recipe's random-init checkpoint
PLACEHOLDER = re.compile(r"\{(world|layouts|text_tokenizer|tokenizer\.[a-z_0-9]+)\}")


class RecipeError(ValueError):
    """A recipe that cannot be expanded: names the file, the key and what to do."""


@dataclasses.dataclass(frozen=True)
class PlannedStage:
    kind: str  # a registered stage kind
    name: str  # what the progress lines and the dry run call it
    job: Job


@dataclasses.dataclass
class Plan:
    """What the stages of one recipe have planned so far: jobs, and the outputs later stages read."""

    recipe: dict
    work: Path
    out: Path
    source: Path
    stages: list[PlannedStage] = dataclasses.field(default_factory=list)
    paths: dict[str, str] = dataclasses.field(default_factory=dict)  # output name -> path ({world}, {tokenizer.depth})
    ids: dict[str, str] = dataclasses.field(default_factory=dict)  # output name -> the run id that makes it
    split_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    label_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # modality folder -> its labels jobs
    token_modality: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> token modality of its tokenizer
    shard_patterns: dict[str, str] = dataclasses.field(default_factory=dict)
    checkpoints: dict[str, str] = dataclasses.field(default_factory=dict)  # init label -> weights
    transfer_runs: dict[str, dict] = dataclasses.field(default_factory=dict)
    task_order: list[str] = dataclasses.field(default_factory=list)
    outputs: dict = dataclasses.field(default_factory=dict)  # stage kind -> its run folder(s), for the report
    _pretrain: dict | None = None

    def add(self, kind: str, name: str, config: dict, after=(), run_dir: Path | None = None) -> Path:
        run_dir = run_dir or self.work / kind / run_id(config)
        job = Job(str(run_dir), config, get_stage(kind).entry, after=tuple(dict.fromkeys(after)),
                  resources=self.resources(kind), name=name)
        self.stages.append(PlannedStage(kind, name, job))
        return run_dir

    def resources(self, kind: str) -> Resources:
        table = self.recipe.get("resources") or {}
        return Resources(**{**(table.get("default") or {}), **(table.get(kind) or {})})

    def get(self, key: str):
        """A required recipe key (dotted); missing is one error naming it."""
        value = self.recipe
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise RecipeError(f"{self.source}: key {key} is missing")
            value = value[part]
        return value

    def fill(self, text: str, where: str) -> str:
        """Replace ``{world}``, ``{layouts}``, ``{text_tokenizer}``, ``{tokenizer.<modality>}`` by the stage outputs."""
        def sub(m):
            if m.group(1) not in self.paths:
                raise RecipeError(f"{where}: {{{m.group(1)}}} names no output of this recipe (known: "
                                  f"{', '.join('{' + k + '}' for k in sorted(self.paths))})")
            return self.paths[m.group(1)]

        return PLACEHOLDER.sub(sub, str(text))

    def after(self, *names: str) -> list[str]:
        """The run ids that make the named outputs (those this recipe makes; given paths have no job)."""
        return [self.ids[k] for k in names if k in self.ids]

    def data_after(self, mod: str) -> list[str]:
        return self.after("world") + self.label_ids.get(mod, [])

    def pretrain_configs(self) -> dict[str, tuple[dict, Path]]:
        """model -> (resolved pretraining config, run folder), resolved once for the stages that need them."""
        if self._pretrain is None:
            from fourm.pretrain.loop import resolve

            pre = self.get("pretrain")
            common = [f"data.train={self.shard_patterns[pre['train_split']]}",
                      f"data.val={self.shard_patterns[pre['val_split']]}",
                      f"data.text_tokenizer={self.paths['text_tokenizer']}", f"runs_root={self.work / 'pretrain'}",
                      *[self.fill(o, f"{self.source}: pretrain.common") for o in pre.get("common", [])]]
            self._pretrain = {}
            for model, extra in pre["models"].items():
                try:
                    full = resolve([f"model.name={model}", *common,
                                    *[self.fill(o, f"{self.source}: pretrain.models.{model}") for o in (extra or [])]])
                except Exception as e:
                    raise RecipeError(f"{self.source}: pretrain.models.{model}: {e}") from e
                self._pretrain[model] = (full, self.work / "pretrain" / run_id(full))
        return self._pretrain


@dataclasses.dataclass(frozen=True)
class StageKind:
    name: str
    plan: Callable[[dict, Plan], None]
    run: Callable[[dict, str], dict] | None
    entry: str
    summary: str = ""


STAGES: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    if kind.name in STAGES:
        raise ValueError(f"stage kind {kind.name!r} is already registered")
    STAGES[kind.name] = kind
    return kind


def register_stage(name: str, plan: Callable[[dict, Plan], None], entry: str | None = None):
    """Decorator on a stage's body ``run(config, run_dir) -> metrics``: register the kind ``name`` with its planner
    (its entry is ``ablations.stages:<function>`` unless ``entry`` names another)."""
    def wrap(run: Callable[[dict, str], dict]):
        register(StageKind(name, plan, run, entry or f"{run.__module__}:{run.__name__}",
                           (run.__doc__ or "").split("\n")[0]))
        return run

    return wrap


def get_stage(name: str) -> StageKind:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage kind {name!r}; registered: {', '.join(STAGES)}") from None


def expand(recipe: dict, work: str | Path, out: str | Path, source: Path = Path("<recipe>")) -> list[PlannedStage]:
    """The recipe's jobs in run order (each after the jobs it reads from); checks every config before returning."""
    plan = Plan(recipe, Path(work).expanduser().resolve(), Path(out).expanduser().resolve(), source)
    for kind in STAGES.values():
        kind.plan(recipe, plan)
    return plan.stages


# --- shared by the bodies ---------------------------------------------------------------------------------------
def _threads() -> None:
    # as many threads as SLURM gave us: the same count on every restart keeps CPU sums in the same order
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        torch.set_num_threads(int(cpus))


def _is_rank0() -> bool:
    return int(os.environ.get("SLURM_PROCID", "0")) == 0


def _record_start(run_dir: Path, kind: str) -> None:
    from slurm.lock import current_job_id

    if _is_rank0():
        run_dir.mkdir(parents=True, exist_ok=True)
        Run(run_dir).log(event="job_start", kind=kind, job_id=current_job_id(), pid=os.getpid(),
                         restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))


def _check_folder(config: dict, run_dir: Path) -> None:
    if run_id(config) != run_dir.name:
        raise ValueError(f"run_dir {run_dir} is not this config's run folder (its id is {run_id(config)}); "
                         "sweeps name run folders <root>/fourm.runs.run_id(config)")


def _remove_debris(run_dir: Path) -> None:
    """Temp files/folders a killed writer left (atomic writes and checkpoints go through ``.NAME.*.tmp`` and
    ``checkpoints/.step-*`` before their rename). Only called with the run's lock held: no live writer owns them."""
    import shutil

    if not _is_rank0():
        return
    found = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    found += [p for p in (run_dir / "checkpoints").glob(".step-*") if p.is_dir()]
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if found:
        Run(run_dir).log(event="removed_debris", paths=sorted(str(p.relative_to(run_dir)) for p in found))


def _start(config: dict, run_dir: str, kind: str) -> Path:
    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    _threads()
    _record_start(run_dir, kind)
    return run_dir


def _open(config: dict, run_dir: str, kind: str) -> Run | None:
    """Check and open a stage's run folder; None when it is already DONE (nothing to do)."""
    from fourm.runs import open_run

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    _threads()
    run = open_run(run_dir.parent, config)
    _record_start(run_dir, kind)
    return None if run.done else run


def _finish(run: Run, metrics: dict) -> dict:
    run.write_metrics(metrics)
    run.mark_done()
    return metrics


def _check_tokenizer_keys(source: Path, key: str, spec: dict, vector: bool) -> None:
    """A vector or mask tokenizer's model keys, checked before any job runs (a typo would fail only in the job)."""
    from fourm.tokenizers.mlp_vqvae import MLPVQVAEConfig
    from fourm.tokenizers.vqvae import VQVAEConfig

    config = MLPVQVAEConfig if vector else VQVAEConfig
    known = {f.name for f in dataclasses.fields(config)} - {"dim", "modality"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise RecipeError(f"{source}: {key}: unknown keys {unknown}; known: steps, seed, batch_size, "
                          f"{'lr, ' if vector else ''}{', '.join(sorted(known))}")


# --- world: the synthetic world, or an existing 4M-layout dataset -------------------------------------------------
def _plan_world(recipe: dict, p: Plan) -> None:
    """``world: {image_size, seed: 0, splits: {split: n}, layout_splits: [train, val]}`` renders the world; without
    it, ``data: {root, layouts: root, splits: {split: n}}`` names an existing 4M-layout dataset (no job)."""
    if recipe.get("world"):
        w = recipe["world"]
        cfg = {"kind": "world", "image_size": int(w["image_size"]), "seed": int(w.get("seed", 0)),
               "splits": {k: int(v) for k, v in w["splits"].items()},
               "layout_splits": list(w.get("layout_splits", ["train", "val"]))}
        world_dir = p.add("world", "world", cfg)
        p.paths.update(world=str(world_dir / "world"), layouts=str(world_dir / "layouts"))
        p.ids["world"] = p.ids["layouts"] = world_dir.name
        p.split_sizes = cfg["splits"]
    else:
        data = p.get("data")
        p.paths.update(world=str(Path(p.get("data.root")).expanduser().resolve()),
                       layouts=str(Path(data.get("layouts") or data["root"]).expanduser().resolve()))
        p.split_sizes = {k: int(v) for k, v in (data.get("splits") or {}).items()}


@register_stage("world", _plan_world)
def world(config: dict, run_dir: str) -> dict:
    """Render the synthetic world's splits into ``<run>/world`` and its dataset layouts into ``<run>/layouts``."""
    import torch

    from fourm.data import layouts
    from fourm.data import world as W

    run = _open(config, run_dir, "world")
    if run is None:
        return Run(run_dir).metrics
    workers = torch.get_num_threads()  # each scene has its own seed: the same images with any worker count
    for split, n in config["splits"].items():
        W.generate(str(run.path / "world"), n, config["image_size"], seed=config["seed"], split=split, workers=workers)
    layouts.write_layouts(run.path / "world", run.path / "layouts", splits=tuple(config["layout_splits"]))
    return _finish(run, {"images": dict(config["splits"])})


# --- text tokenizer ---------------------------------------------------------------------------------------------
def _plan_text_tokenizer(recipe: dict, p: Plan) -> None:
    """``text_tokenizer: {vocab_size: 30000, coord_bins: 1000}`` trains one on the train captions;
    ``text_tokenizer: {path: <tokenizer.json>}`` uses a given one (no job)."""
    text = recipe.get("text_tokenizer") or {}
    if text.get("path"):
        p.paths["text_tokenizer"] = str(Path(text["path"]).expanduser().resolve())
        return
    cfg = {"kind": "text_tokenizer", "world": p.paths["world"], "vocab_size": int(text.get("vocab_size", 30000)),
           "coord_bins": int(text.get("coord_bins", 1000))}
    d = p.add("text_tokenizer", "text tokenizer", cfg, after=p.after("world"))
    p.paths["text_tokenizer"], p.ids["text_tokenizer"] = str(d / "text_tokenizer.json"), d.name


@register_stage("text_tokenizer", _plan_text_tokenizer)
def text_tokenizer(config: dict, run_dir: str) -> dict:
    """Train the WordPiece text tokenizer (4M special tokens, class names, box bins) on the world's train captions."""
    from fourm.data import world as W
    from fourm.data.text import train_wordpiece

    run = _open(config, run_dir, "text_tokenizer")
    if run is None:
        return Run(run_dir).metrics
    captions = [p.read_text() for p in sorted((Path(config["world"]) / "train" / "caption").glob("*.txt"))]
    if not captions:
        raise FileNotFoundError(f"{config['world']}/train/caption: no captions to train the text tokenizer on")
    path = run.path / "text_tokenizer.json"
    path.unlink(missing_ok=True)  # left by a job killed before DONE (we hold the lock): the vocabulary is a pure function
    tok = train_wordpiece(captions, vocab_size=config["vocab_size"], out_path=path,
                          class_names=W.CLASSES, coord_bins=config["coord_bins"])
    return _finish(run, {"vocab_size": tok.get_vocab_size(), "captions": len(captions)})


# --- pseudo labels ----------------------------------------------------------------------------------------------
def _plan_labels(recipe: dict, p: Plan) -> None:
    """``labels: {splits: [train, val], parts: 1, labelers: {<folder>: {labeler: <folder>, batch_size: 16, parts,
    gpu_s_per_image: null, on_bad_image: skip, <options>}}}``: per labeler, ``parts`` jobs (one SLURM array) each
    labelling its contiguous range of every listed split's images; ``gpu_s_per_image`` gives the dry run's GPU-hours
    estimate (else the jobs' reserved time counts)."""
    from fourm.data.labeling import BAD_IMAGE, LABELERS

    lab = recipe.get("labels") or {}
    splits = list(lab.get("splits", ["train", "val"]))
    for folder, spec in (lab.get("labelers") or {}).items():
        spec = dict(spec or {})
        where = f"{p.source}: labels.labelers.{folder}"
        parts, per_image = spec.pop("parts", lab.get("parts", 1)), spec.pop("gpu_s_per_image", None)
        if not isinstance(parts, int) or parts < 1:
            raise RecipeError(f"{where}.parts={parts!r}: a positive number of array tasks")
        cfg = {"kind": "labels", "data": p.paths["world"], "splits": splits, "labeler": spec.pop("labeler", folder),
               "batch_size": int(spec.pop("batch_size", 16)), "on_bad_image": spec.pop("on_bad_image", "skip"),
               "options": spec}
        if cfg["labeler"] not in LABELERS:
            raise RecipeError(f"{where}: unknown labeler {cfg['labeler']!r} (known: {', '.join(sorted(LABELERS))})")
        if cfg["on_bad_image"] not in BAD_IMAGE:
            raise RecipeError(f"{where}.on_bad_image={cfg['on_bad_image']!r}: one of {', '.join(BAD_IMAGE)}")
        images = sum(p.split_sizes.get(s, 0) for s in splits)
        p.label_ids[folder] = []
        for i in range(parts):
            part = {**cfg, **({"part": [i, parts]} if parts > 1 else {})}
            if per_image is not None and images:
                part["_cost_s"] = float(per_image) * images / parts
            d = p.add("labels", f"labels {folder}" + (f" [{i + 1}/{parts}]" if parts > 1 else ""), part,
                      after=p.after("world"))
            p.label_ids[folder].append(d.name)


@register_stage("labels", _plan_labels)
def labels(config: dict, run_dir: str) -> dict:
    """Run one pseudo labeler (``fourm-bench label``) over ``config["splits"]`` of the dataset ``config["data"]``
    (``config["part"]``: its array task's range of each split): it writes ``<data>/<split>/<its modality>/``, the
    folder the tokenizers and shards read (labels already there are kept, so a restarted job labels only the rest)."""
    from fourm.data.labeling import create_labeler, label_folder, rgb_folder

    run = _open(config, run_dir, "labels")
    if run is None:
        return Run(run_dir).metrics
    out = {}
    if "shards" in config:  # per-modality RGB shards: this task's range of them, one label shard each
        from fourm.data.labeling import label_shards

        labeler = create_labeler(config["labeler"], Path(config["shards"]), **config.get("options", {}))
        result = label_shards(config["shards"], labeler, config.get("out"), batch_size=config.get("batch_size", 16),
                              part=tuple(config.get("part", (0, 1))), on_bad_image=config.get("on_bad_image", "stop"),
                              progress=False)
        return _finish(run, {"shards": {"modality": labeler.modality, "labelled": result["labelled"],
                                        "skipped": result["skipped"], "bad_images": len(result["bad"])}})
    for split in config["splits"]:
        split_dir = Path(config["data"]) / split
        labeler = create_labeler(config["labeler"], rgb_folder(split_dir), **config.get("options", {}))
        result = label_folder(split_dir, labeler, config.get("out"), batch_size=config.get("batch_size", 16),
                              part=tuple(config.get("part", (0, 1))), on_bad_image=config.get("on_bad_image", "stop"),
                              progress=False)
        out[split] = {"modality": labeler.modality, "labelled": result["labelled"], "skipped": result["skipped"],
                      "bad_images": len(result["bad"])}
    return _finish(run, out)


# --- tokenizers -------------------------------------------------------------------------------------------------
def _plan_tokenizer(recipe: dict, p: Plan) -> None:
    """``tokenizers: {common: [overrides], modalities: {<folder>: [overrides]}}``: one VQ-VAE per folder
    (``fourm/tokenizers/configs/train.yaml``), in the recipe's order (the longest first: jobs start in order)."""
    from fourm.tokenizers.train import compose_config

    toks = recipe.get("tokenizers") or {}
    for mod, extra in (toks.get("modalities") or {}).items():
        overrides = [f"modality={mod}", f"data={p.paths['world']}", *toks.get("common", []), *(extra or [])]
        try:
            cfg = compose_config("train", [*overrides, "out=unused"])
        except Exception as e:  # hydra's errors name the override; say which recipe key holds it
            raise RecipeError(f"{p.source}: tokenizers.modalities.{mod}: {e}") from e
        cfg.pop("out")
        d = p.add("tokenizer", f"tokenizer {mod}", cfg, after=p.data_after(mod))
        p.paths[f"tokenizer.{mod}"], p.ids[f"tokenizer.{mod}"] = str(d), d.name
        p.token_modality[mod] = cfg["modality"]["token_modality"]


@register_stage("tokenizer", _plan_tokenizer)
def tokenizer(config: dict, run_dir: str) -> dict:
    """Train one VQ-VAE tokenizer (``config`` is a composed ``fourm/tokenizers/configs/train.yaml`` without ``out``)."""
    from fourm.tokenizers.train import train

    run_dir = _start(config, run_dir, "tokenizer")
    return train({**config, "out": str(run_dir.parent)}, progress=False).metrics


def _plan_vector_tokenizer(recipe: dict, p: Plan) -> None:
    """``vector_tokenizers: {common: {...}, modalities: {<folder>: {steps: 500, seed: 0, batch_size: 64, lr: 2e-3,
    <MLPVQVAEConfig keys>}}}``: an MLP VQ-VAE per folder of vectors (global embeddings)."""
    vec = recipe.get("vector_tokenizers") or {}
    for mod, extra in (vec.get("modalities") or {}).items():
        spec = {**(vec.get("common") or {}), **(extra or {})}
        cfg = {"kind": "vector_tokenizer", "data": p.paths["world"], "modality": mod, "steps": int(spec.pop("steps", 500)),
               "seed": int(spec.pop("seed", 0)), "batch_size": int(spec.pop("batch_size", 64)),
               "lr": float(spec.pop("lr", 2e-3)), "model": spec}
        _check_tokenizer_keys(p.source, f"vector_tokenizers.modalities.{mod}", spec, vector=True)
        d = p.add("vector_tokenizer", f"tokenizer {mod}", cfg, after=p.data_after(mod))
        p.paths[f"tokenizer.{mod}"], p.ids[f"tokenizer.{mod}"] = str(d), d.name
        p.token_modality[mod] = spec.get("token_modality", f"tok_{mod}")


@register_stage("vector_tokenizer", _plan_vector_tokenizer)
def vector_tokenizer(config: dict, run_dir: str) -> dict:
    """Train an MLP VQ-VAE on a folder of vectors (global embeddings) of the train split, measure it on the val
    split, and save ``<run>/tokenizer.safetensors``."""
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.mlp_vqvae import train_vector_folder

    run = _open(config, run_dir, "vector_tokenizer")
    if run is None:
        return Run(run_dir).metrics
    keys = ("steps", "seed", "batch_size", "lr", "split", "val_split")
    tok, metrics = train_vector_folder(config["data"], config["modality"], **{k: config[k] for k in keys if k in config},
                                       **config["model"])
    save_tokenizer(tok, run.path / "tokenizer.safetensors")
    return _finish(run, metrics)


MASK_FOLDER = "sam_instance"  # the id maps the mask tokenizer learns from; its tokens are written as this modality


def _plan_mask_tokenizer(recipe: dict, p: Plan) -> None:
    """``mask_tokenizer: {steps: 300, seed: 0, batch_size: 32, <VQVAEConfig keys>}``: the SAM-instance mask tokenizer."""
    if not recipe.get("mask_tokenizer"):
        return
    spec = dict(recipe["mask_tokenizer"])
    cfg = {"kind": "mask_tokenizer", "data": p.paths["world"], "steps": int(spec.pop("steps", 300)),
           "seed": int(spec.pop("seed", 0)), "batch_size": int(spec.pop("batch_size", 32)), "model": spec}
    _check_tokenizer_keys(p.source, "mask_tokenizer", spec, vector=False)
    d = p.add("mask_tokenizer", f"tokenizer {MASK_FOLDER}", cfg, after=p.data_after(MASK_FOLDER))
    p.paths[f"tokenizer.{MASK_FOLDER}"], p.ids[f"tokenizer.{MASK_FOLDER}"] = str(d), d.name
    p.token_modality[MASK_FOLDER] = MASK_FOLDER


@register_stage("mask_tokenizer", _plan_mask_tokenizer)
def mask_tokenizer(config: dict, run_dir: str) -> dict:
    """Train the SAM-instance mask tokenizer on every instance of the train split's ``sam_instance`` id maps and save
    ``<run>/tokenizer.safetensors``; IoU through the tokens and of the whole-box baseline on the val split."""
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.sam import train_mask_folder

    run = _open(config, run_dir, "mask_tokenizer")
    if run is None:
        return Run(run_dir).metrics
    keys = ("steps", "seed", "batch_size", "split", "val_split")
    tok, metrics = train_mask_folder(config["data"], **{k: config[k] for k in keys if k in config}, **config.get("model", {}))
    save_tokenizer(tok, run.path / "tokenizer.safetensors")
    return _finish(run, metrics)


# --- token shards -----------------------------------------------------------------------------------------------
def _plan_shards(recipe: dict, p: Plan) -> None:
    """``shards: {splits: [train, val], common: [encode overrides], parts: 1, gpu_s_per_image: null}`` (required):
    token shards of each split with every tokenizer above; their file names are fixed by the split sizes. With
    ``parts`` > 1, that many jobs (one SLURM array) each encode their range of every split's shards into the shard
    folder, and the last job, after them, writes the indexes (finding every shard there)."""
    from fourm.tokenizers.train import compose_config

    sh = p.get("shards")
    parts, per_image = sh.get("parts", 1), sh.get("gpu_s_per_image")
    if not isinstance(parts, int) or parts < 1:
        raise RecipeError(f"{p.source}: shards.parts={parts!r}: a positive number of array tasks")
    splits, patterns = {}, {}
    for split in sh["splits"]:
        overrides = [f"data={p.paths['world']}", f"split={split}", "out=unused", *sh.get("common", []),
                     *[f"tokenizers.{m}={p.paths[f'tokenizer.{m}']}" for m in p.token_modality]]
        cfg = compose_config("encode", overrides)
        cfg.pop("out")
        cfg["data"] = str(Path(cfg["data"]).resolve())
        splits[split] = cfg
        n = p.split_sizes.get(split)
        if n is None:
            raise RecipeError(f"{p.source}: shards.splits has {split!r}, but the data's size of that split is not known "
                              f"(set world.splits.{split} or data.splits.{split})")
        n = min(n, cfg["max_samples"] or n)
        if cfg.get("layout", "wds") == "fourm":
            patterns[split] = "{}/{}-{{000000..{:06d}}}.tar".format("{shards}", split, math.ceil(n / cfg["samples_per_shard"]) - 1)
        else:  # the split's folder of per-modality shards (or the folder layout) reads as it is
            patterns[split] = f"{{shards}}/{split}"
    cfg = {"kind": "shards", "splits": splits}
    shards_dir = p.work / "shards" / run_id(cfg)
    # what the shard files will be called (bookkeeping, not identity: it follows from the splits)
    cfg["_patterns"] = {k: v.replace("{shards}", str(shards_dir)) for k, v in patterns.items()}
    p.shard_patterns = cfg["_patterns"]
    inputs = [p.ids[f"tokenizer.{m}"] for m in p.token_modality] + [i for ids in p.label_ids.values() for i in ids] \
        + p.after("world")
    images = sum(min(p.split_sizes[s], splits[s]["max_samples"] or p.split_sizes[s]) for s in splits)
    part_ids = []
    for i in range(parts if parts > 1 else 0):
        part = {"kind": "shards", "splits": splits, "part": [i, parts], "_out": str(shards_dir)}
        if per_image is not None:
            part["_cost_s"] = float(per_image) * images / parts
        part_ids.append(p.add("shards", f"token shards [{i + 1}/{parts}]", part, after=inputs).name)
    if per_image is not None and parts == 1:
        cfg["_cost_s"] = float(per_image) * images
    p.add("shards", "token shards" + (" (indexes)" if parts > 1 else ""), cfg, after=inputs + part_ids,
          run_dir=shards_dir)
    p.ids["shards"] = shards_dir.name


@register_stage("shards", _plan_shards)
def shards(config: dict, run_dir: str) -> dict:
    """Encode each split of ``config["splits"]`` (composed encode configs without ``out``) into this run folder (or
    ``config["out"]``, the array command's); a part (``config["part"]``, an array task) encodes its range of shards
    into that shard folder (a pipeline's: ``config["_out"]``) and writes no index."""
    from fourm.tokenizers.encode import encode_dataset

    run = _open(config, run_dir, "shards")
    if run is None:
        return Run(run_dir).metrics
    out = {}
    # the shard folder: this run's own (a pipeline's), or the one named by the array command (out)
    shard_dir = config.get("out") or config.get("_out") or str(run.path)
    if "part" in config:
        i, n = config["part"]
        for split, cfg in config["splits"].items():
            res = encode_dataset({**cfg, "out": shard_dir, "part": f"{i}/{n}"}, progress=False)
            out[split] = {"samples": res["samples"], "shards": len(res["shards"]), "written": res["shards_written"]}
        return _finish(run, out)
    for split, cfg in config["splits"].items():
        index = encode_dataset({**cfg, "out": shard_dir}, progress=False)
        want = config.get("_patterns", {}).get(split)
        got = index.get("root", index["pattern"])
        if want and got != want and Path(got).resolve() != Path(want).resolve():
            raise RuntimeError(f"{run.path}/{split}.json: the shards are {got}, not {want} as the "
                               "pipeline planned (samples_per_shard or the split's size changed)")
        out[split] = {"samples": index["samples"], "shards": len(index["shards"]), "bytes": index["bytes"]}
    return _finish(run, out)


# --- pretraining, and the random-init checkpoint of the same architecture ------------------------------------------
def _plan_random_init(recipe: dict, p: Plan) -> None:
    """``random_init: {like: <a pretrain model>}``: the untrained weights of that model, a transfer init."""
    like = (recipe.get("random_init") or {}).get("like")
    if not like:
        return
    configs = p.pretrain_configs()
    if like not in configs:
        raise RecipeError(f"{p.source}: random_init.like={like!r} is not one of pretrain.models ({', '.join(configs)})")
    d = p.add("random_init", f"random init ({like})", {"kind": "random_init", "pretrain": configs[like][0]},
              after=[p.ids["shards"], *p.after("text_tokenizer")])
    p.checkpoints[RANDOM_INIT], p.ids[RANDOM_INIT] = str(d / "model.safetensors"), d.name


@register_stage("random_init", _plan_random_init)
def random_init(config: dict, run_dir: str) -> dict:
    """Save the untrained weights of ``config["pretrain"]``'s model (seeded by its seed) as ``<run>/model.safetensors``."""
    import torch

    from fourm.models import save_checkpoint
    from fourm.pretrain.loop import build_model

    run = _open(config, run_dir, "random_init")
    if run is None:
        return Run(run_dir).metrics
    cfg = config["pretrain"]
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg)
    save_checkpoint(model, run.path / "model.safetensors")
    return _finish(run, {"checkpoint": str(run.path / "model.safetensors"),
                         "parameters": sum(p.numel() for p in model.parameters())})


def final_checkpoint(run_dir: str | Path, cfg: dict) -> Path:
    """Where a pretraining run leaves its final weights (known in advance: the config fixes the last step)."""
    from fourm.pretrain.loop import total_steps

    return Path(run_dir) / "checkpoints" / f"step-{total_steps(cfg):06d}" / "model.safetensors"


def _plan_pretrain(recipe: dict, p: Plan) -> None:
    """``pretrain: {train_split, val_split, common: [overrides], models: {<model name>: [overrides]}}`` (required):
    one pretraining per model (hydra overrides of ``fourm/pretrain/configs``), on the shards above."""
    for model, (cfg, run_dir) in p.pretrain_configs().items():
        p.add("pretrain", f"pretrain {model}", cfg, after=[p.ids["shards"], *p.after("text_tokenizer")], run_dir=run_dir)
        p.checkpoints[model], p.ids[model] = str(final_checkpoint(run_dir, cfg)), run_dir.name
        p.outputs.setdefault("pretrain", {})[model] = run_dir


@register_stage("pretrain", _plan_pretrain)
def pretrain(config: dict, run_dir: str) -> dict:
    """Pretrain ``config`` in ``run_dir`` (resuming from its latest checkpoint); writes metrics.json and DONE."""
    from fourm.pretrain.loop import run_from_config

    run_dir = _start(config, run_dir, "pretrain")
    if Run(run_dir).done:
        return Run(run_dir).metrics
    _remove_debris(run_dir)
    return run_from_config(config, str(run_dir))


# --- transfers --------------------------------------------------------------------------------------------------
def _plan_transfer(recipe: dict, p: Plan) -> None:
    """``transfer: {model, profile: tiny, common: [overrides], inits: {<label>: <pretrain model | random_init>},
    tasks: {<task>: {seeds: [0], overrides: [...], data_root: <layouts>, cost_s: 1}}}``: every init x task x seed,
    the costliest tasks first."""
    from transfer.run import make_config

    tr = recipe.get("transfer") or {}
    tasks = tr.get("tasks") or {}
    p.task_order = sorted(tasks, key=lambda t: -float(tasks[t].get("cost_s", 1)))
    for label, init in (tr.get("inits") or {}).items():
        if init not in p.checkpoints:
            raise RecipeError(f"{p.source}: transfer.inits.{label}={init!r} is neither a pretrain model nor "
                              f"{RANDOM_INIT} (with random_init.like set)")
        for task in p.task_order:
            spec = tasks[task] or {}
            for seed in spec.get("seeds", [0]):
                ovr = [f"data_root={spec.get('data_root') or p.paths['layouts']}", f"method={label}",
                       f"model={tr['model']}", f"seed={seed}",
                       *[p.fill(o, f"{p.source}: transfer.tasks.{task}") for o in spec.get("overrides", [])],
                       *[p.fill(o, f"{p.source}: transfer.common") for o in tr.get("common", [])]]
                try:
                    tcfg = make_config(task, tr.get("profile", "tiny"), [*ovr, "init=random"])
                except Exception as e:
                    raise RecipeError(f"{p.source}: transfer.tasks.{task}: {e}") from e
                tcfg["transfer"]["init"] = p.checkpoints[init]  # a path that exists once its parent is DONE
                after = [p.ids[init], *p.after("layouts")]
                after += [p.ids[k] for k in p.ids if k.startswith("tokenizer.") and any(p.paths[k] in o for o in ovr)]
                key = task if seed == 0 else f"{task} (seed {seed})"
                d = p.add("transfer", f"transfer {key} [{label}]", tcfg, after=after)
                p.transfer_runs[str(d)] = {"task": task, "seed": seed, "label": label, "key": key}


@register_stage("transfer", _plan_transfer)
def transfer(config: dict, run_dir: str) -> dict:
    """Fine-tune and evaluate ``config`` (a resolved transfer config) in ``run_dir``; writes metrics.json and DONE."""
    from transfer.run import run_transfer

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    init = config["transfer"]["init"]
    if init != "random" and not Path(init).exists():
        raise FileNotFoundError(f"transfer.init {init} does not exist: its pretraining run has not finished "
                                "(a sweep submits this job afterok its pretraining job)")
    _threads()
    _record_start(run_dir, "transfer")
    _remove_debris(run_dir)  # rank 0 writes (and cleans) the run folder
    return run_transfer(config, runs_root=str(run_dir.parent)).metrics


# --- out of the box and generations from one pretrained model --------------------------------------------------------
def _tokenizer_args(p: Plan) -> list[str]:
    return [f"checkpoint={p.checkpoints[p.recipe['oob']['model']]}", f"text_tokenizer={p.paths['text_tokenizer']}",
            *[f"tokenizers.{m}={p.paths[f'tokenizer.{m}']}" for m, t in p.token_modality.items() if t != MASK_FOLDER]]


def _plan_oob(recipe: dict, p: Plan) -> None:
    """``oob: {model: <a pretrain model>, args: [oob overrides], generate: [generate overrides]}``: the out-of-the-box
    evaluation (and, with ``generate``, generations) of one pretrained model."""
    ob = recipe.get("oob") or {}
    if not ob:
        return
    from fourm.generation import oob

    model = ob["model"]
    args = [*_tokenizer_args(p), f"data={p.paths['world']}", *[p.fill(o, f"{p.source}: oob.args") for o in ob.get("args", [])]]
    parsed = oob.parse_args(args)
    p.outputs["oob"] = p.add("oob", f"out of the box ({model})", {**oob.run_config(parsed), "_args": args},
                             after=[p.ids[model], *p.after("world")])


@register_stage("oob", _plan_oob)
def out_of_the_box(config: dict, run_dir: str) -> dict:
    """`fourm-bench oob` with ``config["_args"]`` into this run folder (keyed by ``fourm.generation.oob.run_config``)."""
    from fourm.generation import oob

    run_dir = _start(config, run_dir, "oob")
    return oob.run_oob({**oob.parse_args(config["_args"]), "runs_root": str(run_dir.parent)}, progress=False).metrics


def _plan_generate(recipe: dict, p: Plan) -> None:
    ob = recipe.get("oob") or {}
    if not ob.get("generate"):
        return
    model = ob["model"]
    gargs = [*_tokenizer_args(p), *[p.fill(o, f"{p.source}: oob.generate") for o in ob["generate"]]]
    p.outputs["generate"] = p.add("generate", f"generations ({model})", {"kind": "generate", "args": gargs},
                                  after=[p.ids[model], *p.after("world")])


@register_stage("generate", _plan_generate)
def generate(config: dict, run_dir: str) -> dict:
    """`fourm-bench generate` with ``config["args"]`` into this run folder: one PNG grid (and .npz, .json) per input."""
    from fourm.generation import cli as generate_cli

    run = _open(config, run_dir, "generate")
    if run is None:
        return Run(run_dir).metrics
    generate_cli.run_generate(generate_cli.parse_args([*config["args"], f"out={run.path}"]), progress=False)
    return _finish(run, {"images": len(list(run.path.glob("*.png")))})


# --- the report: tables, plots and the verdict from the run folders above ------------------------------------------
def _plan_report(recipe: dict, p: Plan) -> None:
    """``report: {scaling_plot: <more than one pretrain model>}``: the tables, plots and summary, into ``out``."""
    rep = recipe.get("report") or {}
    tr = recipe.get("transfer") or {}
    tasks = tr.get("tasks") or {}
    pretrain_dirs = p.outputs.get("pretrain", {})
    oob_dir, gen_dir = p.outputs.get("oob"), p.outputs.get("generate")
    cfg = {"kind": "report", "out": str(p.out), "labels": list(tr.get("inits") or {}), "tasks": p.task_order,
           "task_order": list(tasks), "transfer": p.transfer_runs, "pretrain": {m: str(d) for m, d in pretrain_dirs.items()},
           "oob": str(oob_dir) if oob_dir else None, "generations": str(gen_dir) if gen_dir else None,
           "linear_probe_tasks": [t for t in tasks if "protocol=linear" in (tasks[t] or {}).get("overrides", [])],
           "scaling_plot": bool(rep.get("scaling_plot", len(pretrain_dirs) > 1)), "recipe": str(p.source)}
    p.add("report", "report", cfg, after=[Path(s.job.run_dir).name for s in p.stages if s.kind in
                                           ("pretrain", "transfer", "oob", "generate")])


# its body reads run folders and writes tables: it lives with the results (results.report.report), a layer above
register(StageKind("report", _plan_report, None, "results.report:report", "the tables, plots and verdict of a pipeline"))
