"""What sweep jobs run on a worker: ``pretrain(config, run_dir)`` and ``transfer(config, run_dir)``.

Both are called by :class:`slurm.submit.RunEntry` with the run folder's lock held, and resume from what is on disk
(the latest pretraining checkpoint, the transfer task's own checkpoint), never from pickled state. Each call records
``job_start`` (job id, pid, restart count) in the run's log.jsonl, so a run's history shows which job wrote what.
"""
from __future__ import annotations

import os
from pathlib import Path

from fourm.runs import Run, run_id


def _threads() -> None:
    # as many threads as SLURM gave us: the same count on every restart keeps CPU sums in the same order
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        torch.set_num_threads(int(cpus))


def _record_start(run_dir: Path, kind: str) -> None:
    from slurm.lock import current_job_id

    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        Run(run_dir).log(event="job_start", kind=kind, job_id=current_job_id(), pid=os.getpid(),
                         restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))


def _check_folder(config: dict, run_dir: Path) -> None:
    if run_id(config) != run_dir.name:
        raise ValueError(f"run_dir {run_dir} is not this config's run folder (its id is {run_id(config)}); "
                         "sweeps name run folders <root>/fourm.runs.run_id(config)")


def _remove_debris(run_dir: Path) -> list[str]:
    """Temp files/folders a killed writer left (atomic writes and checkpoints go through ``.NAME.*.tmp`` and
    ``checkpoints/.step-*`` before their rename). Only called with the run's lock held: no live writer owns them."""
    import shutil

    found = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    found += [p for p in (run_dir / "checkpoints").glob(".step-*") if p.is_dir()]
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return sorted(str(p.relative_to(run_dir)) for p in found)


def pretrain(config: dict, run_dir: str) -> dict:
    """Pretrain ``config`` in ``run_dir`` (resuming from its latest checkpoint); writes metrics.json and DONE."""
    from fourm.pretrain.loop import run_from_config

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    _threads()
    _record_start(run_dir, "pretrain")
    if Run(run_dir).done:
        return Run(run_dir).metrics
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        removed = _remove_debris(run_dir)
        if removed:
            Run(run_dir).log(event="removed_debris", paths=removed)
    return run_from_config(config, str(run_dir))


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
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:  # rank 0 writes (and cleans) the run folder
        removed = _remove_debris(run_dir)
        if removed:
            Run(run_dir).log(event="removed_debris", paths=removed)
    return run_transfer(config, runs_root=str(run_dir.parent)).metrics


# --- the stages of a pipeline (ablations/pipeline.py): each writes its outputs into its own run folder ----------------
def _open(config: dict, run_dir: Path, kind: str) -> Run | None:
    """Check and open a stage's run folder; None when it is already DONE (nothing to do)."""
    from fourm.runs import open_run

    _check_folder(config, run_dir)
    _threads()
    run = open_run(run_dir.parent, config)
    _record_start(run_dir, kind)
    return None if run.done else run


def _finish(run: Run, metrics: dict) -> dict:
    run.write_metrics(metrics)
    run.mark_done()
    return metrics


def world(config: dict, run_dir: str) -> dict:
    """Render the synthetic world's splits into ``<run>/world`` and its dataset layouts into ``<run>/layouts``."""
    import torch

    from fourm.data import layouts
    from fourm.data import world as W

    run = _open(config, Path(run_dir), "world")
    if run is None:
        return Run(run_dir).metrics
    workers = torch.get_num_threads()  # each scene has its own seed: the same images with any worker count
    for split, n in config["splits"].items():
        W.generate(str(run.path / "world"), n, config["image_size"], seed=config["seed"], split=split, workers=workers)
    layouts.write_layouts(run.path / "world", run.path / "layouts", splits=tuple(config["layout_splits"]))
    return _finish(run, {"images": dict(config["splits"])})


def text_tokenizer(config: dict, run_dir: str) -> dict:
    """Train the WordPiece text tokenizer (4M special tokens, class names, box bins) on the world's train captions."""
    from fourm.data import world as W
    from fourm.data.text import train_wordpiece

    run = _open(config, Path(run_dir), "text_tokenizer")
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


def tokenizer(config: dict, run_dir: str) -> dict:
    """Train one VQ-VAE tokenizer (``config`` is a composed ``fourm/tokenizers/configs/train.yaml`` without ``out``)."""
    from fourm.tokenizers.train import train

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    _threads()
    _record_start(run_dir, "tokenizer")
    return train({**config, "out": str(run_dir.parent)}, progress=False).metrics


def labels(config: dict, run_dir: str) -> dict:
    """Run one pseudo labeler (``fourm-bench label``) over ``config["splits"]`` of the dataset ``config["data"]``: it
    writes ``<data>/<split>/<its modality>/``, the folder the tokenizers and shards read (labels already there are
    kept, so a restarted job labels only the rest)."""
    from fourm.data.labeling import create_labeler, label_folder, rgb_folder

    run = _open(config, Path(run_dir), "labels")
    if run is None:
        return Run(run_dir).metrics
    out = {}
    for split in config["splits"]:
        split_dir = Path(config["data"]) / split
        labeler = create_labeler(config["labeler"], rgb_folder(split_dir), **config.get("options", {}))
        result = label_folder(split_dir, labeler, batch_size=config.get("batch_size", 16))
        out[split] = {"modality": labeler.modality, "labelled": result["labelled"], "skipped": result["skipped"]}
    return _finish(run, out)


def vector_tokenizer(config: dict, run_dir: str) -> dict:
    """Train an MLP VQ-VAE on a folder of vectors (global embeddings) of the train split, measure it on the val
    split, and save ``<run>/tokenizer.safetensors``."""
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.mlp_vqvae import train_vector_folder

    run = _open(config, Path(run_dir), "vector_tokenizer")
    if run is None:
        return Run(run_dir).metrics
    keys = ("steps", "seed", "batch_size", "lr", "split", "val_split")
    tok, metrics = train_vector_folder(config["data"], config["modality"], **{k: config[k] for k in keys if k in config},
                                       **config["model"])
    save_tokenizer(tok, run.path / "tokenizer.safetensors")
    return _finish(run, metrics)


def mask_tokenizer(config: dict, run_dir: str) -> dict:
    """Train the SAM-instance mask tokenizer on every instance of the train split's ``sam_instance`` id maps and save
    ``<run>/tokenizer.safetensors``; IoU through the tokens and of the whole-box baseline on the val split."""
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.sam import train_mask_folder

    run = _open(config, Path(run_dir), "mask_tokenizer")
    if run is None:
        return Run(run_dir).metrics
    keys = ("steps", "seed", "batch_size", "split", "val_split")
    tok, metrics = train_mask_folder(config["data"], **{k: config[k] for k in keys if k in config}, **config.get("model", {}))
    save_tokenizer(tok, run.path / "tokenizer.safetensors")
    return _finish(run, metrics)


def shards(config: dict, run_dir: str) -> dict:
    """Encode each split of ``config["splits"]`` (composed encode configs without ``out``) into this run folder."""
    from fourm.tokenizers.encode import encode_dataset

    run = _open(config, Path(run_dir), "shards")
    if run is None:
        return Run(run_dir).metrics
    out = {}
    for split, cfg in config["splits"].items():
        index = encode_dataset({**cfg, "out": str(run.path)}, progress=False)
        want = config["_patterns"][split]
        if index["pattern"] != want:
            raise RuntimeError(f"{run.path}/{split}.json: the shards are {index['pattern']}, not {want} as the "
                               "pipeline planned (samples_per_shard or the split's size changed)")
        out[split] = {"samples": index["samples"], "shards": len(index["shards"]), "bytes": index["bytes"]}
    return _finish(run, out)


def random_init(config: dict, run_dir: str) -> dict:
    """Save the untrained weights of ``config["pretrain"]``'s model (seeded by its seed) as ``<run>/model.safetensors``."""
    import torch

    from fourm.models import save_checkpoint
    from fourm.pretrain.loop import build_model

    run = _open(config, Path(run_dir), "random_init")
    if run is None:
        return Run(run_dir).metrics
    cfg = config["pretrain"]
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg)
    save_checkpoint(model, run.path / "model.safetensors")
    return _finish(run, {"checkpoint": str(run.path / "model.safetensors"),
                         "parameters": sum(p.numel() for p in model.parameters())})


def out_of_the_box(config: dict, run_dir: str) -> dict:
    """`fourm-bench oob` with ``config["_args"]`` into this run folder (keyed by ``fourm.generation.oob.run_config``)."""
    from fourm.generation import oob

    run_dir = Path(run_dir)
    _check_folder(config, run_dir)
    _threads()
    _record_start(run_dir, "oob")
    return oob.run_oob({**oob.parse_args(config["_args"]), "runs_root": str(run_dir.parent)}, progress=False).metrics


def generate(config: dict, run_dir: str) -> dict:
    """`fourm-bench generate` with ``config["args"]`` into this run folder: one PNG grid (and .npz, .json) per input."""
    from fourm.generation import cli as generate_cli

    run = _open(config, Path(run_dir), "generate")
    if run is None:
        return Run(run_dir).metrics
    generate_cli.run_generate(generate_cli.parse_args([*config["args"], f"out={run.path}"]), progress=False)
    return _finish(run, {"images": len(list(run.path.glob("*.png")))})
