"""`fourm-bench generate`: chained any-to-any generation from images, with a picture per input.

    fourm-bench generate checkpoint=<model.safetensors> tokenizers.depth=<run> tokenizers.semseg=<run> text_tokenizer=<json> \\
        cond=rgb@224 targets=tok_depth@224,tok_semseg@224,caption input=<image | folder | world split> out=DIR

Options (key=value): ``steps=8`` MaskGIT/ROAR steps per image target, ``scheme=maskgit|roar``, ``temp=0.0`` for
image targets, ``text_temp=0.7`` / ``top_p=0.9`` / ``top_k=0`` for sequences, ``text_tokens=64``, ``cfg=1.0``
(classifier-free guidance on the conditions), ``seed=0``, ``batch=8``, ``num=`` (first N inputs), ``threads=``.
Official 4M tokenizers (``tokenizers.depth=<official file or Hugging Face id>``) decode on the model's token grid;
their diffusion decoders take ``decode_steps=25`` and ``decode_scheduler=`` (empty: the model's own DDPM; ``ddim``).
Conditioning may be partial, ``inpaint=x0,y0,x1,y1`` hides that pixel box of the RGB from the model, and edited,
``caption="a red cube ..."`` or ``boxes="v0=.. v1=.. v2=.. v3=.. cube ..."`` are given as inputs instead of generated.

Per input ``<out>/<stem>.png`` (input, then each generated modality: depth colour-mapped, normals as RGB, semseg with a
palette, boxes drawn on the image, the caption as text) and ``<stem>.npz`` (tokens and decoded arrays; text and boxes
in ``<stem>.json``). ``<out>/generate.json`` records the settings and seeds; a rerun skips finished inputs and refuses
an ``out`` made with other settings.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fourm.files import atomic_write_json
from fourm.modalities import spec
from fourm.generation.detokenize import Detokenizer
from fourm.generation.generator import GenerateError, Generator, load_image  # noqa: F401  (GenerateError: this command's)
from fourm.tokenizers.checkpoint import atomic_write_bytes

DEFAULTS = dict(checkpoint=None, text_tokenizer=None, cond="rgb@224", targets=None, input=None, out=None, steps=8,
                scheme="maskgit", temp=0.0, text_temp=0.7, top_p=0.9, top_k=0, text_tokens=64, cfg=1.0, seed=0,
                batch=8, num=None, threads=None, inpaint=None, caption=None, boxes=None, decode_steps=25,
                decode_scheduler="")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def parse_key_values(argv: list[str], defaults: dict, command: str) -> dict:
    """``key=value`` arguments over ``defaults`` (a value takes its default's type; ``tokenizers.<modality>=<run>``
    are collected under ``tokenizers``)."""
    cfg = dict(defaults, tokenizers={})
    for a in argv:
        if "=" not in a:
            raise GenerateError(f"argument {a!r} is not key=value; see `fourm-bench {command} --help`")
        k, v = a.split("=", 1)
        if k == "model" and "model" not in defaults:
            raise GenerateError(f"model={v}: model= names an architecture (as in pretrain and transfer); give the "
                                "weights as checkpoint=<model.safetensors>")
        if k.startswith("tokenizers."):
            cfg["tokenizers"][k.split(".", 1)[1]] = v
        elif k not in defaults:
            raise GenerateError(f"unknown argument {k!r}; known: {sorted(defaults) + ['tokenizers.<modality>']}")
        else:
            default = defaults[k]
            try:
                cfg[k] = type(default)(v) if isinstance(default, (int, float)) and not isinstance(default, bool) else v
            except ValueError:
                raise GenerateError(f"{k}={v!r}: expected a {type(default).__name__}") from None
    return cfg


def parse_args(argv: list[str]) -> dict:
    """The generate command's arguments (see the module docstring)."""
    cfg = parse_key_values(argv, DEFAULTS, "generate")
    for k in ("checkpoint", "targets", "input", "out"):
        if not cfg[k]:
            raise GenerateError(f"{k}= is required (e.g. {k}={_EXAMPLES[k]})")
    cfg["cond"] = [c for c in str(cfg["cond"]).split(",") if c]
    cfg["targets"] = [t for t in str(cfg["targets"]).split(",") if t]
    if cfg["num"] is not None:
        cfg["num"] = int(cfg["num"])
    return cfg


_EXAMPLES = {"checkpoint": "runs/pretrain/<id>/checkpoints/final.safetensors", "targets": "tok_depth@224,caption",
             "input": "data/demo/world/val", "out": "results/generations"}


def list_inputs(path: str | Path) -> list[Path]:
    """An image file, a folder of images, or a dataset split (its ``rgb/`` folder)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        folder = p / "rgb" if (p / "rgb").is_dir() else p
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if files:
            return files
        raise GenerateError(f"input={path}: no {'/'.join(IMAGE_EXTS)} images in {folder}")
    raise GenerateError(f"input={path} does not exist; give an image, a folder of images or a split with rgb/")


def run_generate(cfg: dict, progress: bool = True) -> Path:
    """Generate for every input not yet done in ``out``; returns ``out``."""
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in cfg.items() if k not in ("out", "threads", "num", "batch", "input")}
    record = out / "generate.json"
    if record.exists():
        prev = json.loads(record.read_text())
        if prev["settings"] != json.loads(json.dumps(settings)):
            raise GenerateError(f"{out} holds generations made with other settings ({record}); pass another out=")
        done_seeds = prev["seeds"]
    else:
        done_seeds = {}
    files = list_inputs(cfg["input"])[: cfg["num"]]
    todo = [f for f in files if not (out / f"{f.stem}.png").exists()]
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    if not todo:
        print(f"generate: all {len(files)} inputs already done in {out}")
        return out
    gen = Generator(cfg)
    size = gen.image_size
    bar = tqdm(total=len(todo), desc="generate", unit="img", disable=not progress)
    for b in range(0, len(todo), cfg["batch"]):
        chunk = todo[b: b + cfg["batch"]]
        loaded = [load_image(f, size) for f in chunk]
        seed = int(cfg["seed"]) + files.index(chunk[0])  # a batch's seed: the base seed + its first input's index
        result = gen.generate(torch.stack([x for x, _ in loaded]), seed)
        decoded = {t: gen.detok.decode(t, result[t]) for t in cfg["targets"]}
        for i, (f, (_, pic)) in enumerate(zip(chunk, loaded)):
            _write_one(out, f.stem, pic, cfg["targets"], result, decoded, i, gen.detok)
            done_seeds[f.stem] = seed
        atomic_write_json(record, {"settings": settings, "seeds": done_seeds})
        bar.update(len(chunk))
    bar.close()
    return out


def _write_one(out: Path, stem: str, pic: np.ndarray, targets, result, decoded, i: int, detok: Detokenizer) -> None:
    from fourm.tokenizers.decode import grid_image

    arrays, texts, tiles, labels = {}, {}, [pic], ["input"]
    for t in targets:
        arrays[f"{t}.tokens"] = result[t]["tensor"][i].numpy()
        mod = detok.modality(t)
        value = decoded[t][i]
        kind = spec(mod).value
        if kind == "text":
            texts[t] = value
        elif kind == "boxes":
            texts[t] = [list(b) for b in value]
        else:
            arrays[t] = value.numpy()
        num_classes = detok.tokenizers[t].config.num_classes if t in detok.tokenizers else 256
        tiles.append(spec(mod).picture(value, rgb=pic, num_classes=max(num_classes, 1)))
        labels.append(t.split("@")[0].removeprefix("tok_"))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out / f"{stem}.npz", buf.getvalue())
    atomic_write_json(out / f"{stem}.json", texts)
    png = io.BytesIO()
    grid_image([tiles], labels, tile=max(128, pic.shape[0])).save(png, format="PNG")
    atomic_write_bytes(out / f"{stem}.png", png.getvalue())  # last: marks the input done


def cli(argv: list[str]) -> int:
    from fourm.models.checkpoint import CheckpointError

    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = parse_args([a for a in argv if a != "--print-config"])
        if "--print-config" in argv:
            print(json.dumps(cfg, indent=2, default=str))
            return 0
        out = run_generate(cfg)
    except (GenerateError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"fourm-bench generate: {e}")
        return 2
    print(f"wrote generations to {out}")
    return 0
