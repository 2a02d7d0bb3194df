"""`fourm-bench generate`: chained any-to-any generation from images, with a picture per input.

    fourm-bench generate model=<checkpoint> tokenizers.depth=<run> tokenizers.semseg=<run> text_tokenizer=<json> \\
        cond=rgb@224 targets=tok_depth@224,tok_semseg@224,caption input=<image | folder | world split> out=DIR

Options (key=value): ``steps=8`` MaskGIT/ROAR steps per image target, ``scheme=maskgit|roar``, ``temp=0.0`` for
image targets, ``text_temp=0.7`` / ``top_p=0.9`` / ``top_k=0`` for sequences, ``text_tokens=64``, ``cfg=1.0``
(classifier-free guidance on the conditions), ``seed=0``, ``batch=8``, ``num=`` (first N inputs), ``threads=``.
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
from PIL import Image
from tqdm import tqdm

from fourm.files import atomic_write_json
from fourm.generation.detokenize import Detokenizer, render
from fourm.generation.modality_dicts import init_empty_target_modality, init_full_input_modality, kind_of
from fourm.generation.sampler import GenerationSampler
from fourm.generation.schedules import build_chained_generation_schedules
from fourm.pretrain.data import IMAGENET_MEAN, IMAGENET_STD
from fourm.tokenizers.checkpoint import atomic_write_bytes

DEFAULTS = dict(model=None, text_tokenizer=None, cond="rgb@224", targets=None, input=None, out=None, steps=8,
                scheme="maskgit", temp=0.0, text_temp=0.7, top_p=0.9, top_k=0, text_tokens=64, cfg=1.0, seed=0,
                batch=8, num=None, threads=None, inpaint=None, caption=None, boxes=None)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class GenerateError(ValueError):
    """A generate call that cannot run; the message names the argument and the fix."""


def parse_key_values(argv: list[str], defaults: dict, command: str) -> dict:
    """``key=value`` arguments over ``defaults`` (a value takes its default's type; ``tokenizers.<modality>=<run>``
    are collected under ``tokenizers``)."""
    cfg = dict(defaults, tokenizers={})
    for a in argv:
        if "=" not in a:
            raise GenerateError(f"argument {a!r} is not key=value; see `fourm-bench {command} --help`")
        k, v = a.split("=", 1)
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
    for k in ("model", "targets", "input", "out"):
        if not cfg[k]:
            raise GenerateError(f"{k}= is required (e.g. {k}={_EXAMPLES[k]})")
    cfg["cond"] = [c for c in str(cfg["cond"]).split(",") if c]
    cfg["targets"] = [t for t in str(cfg["targets"]).split(",") if t]
    if cfg["num"] is not None:
        cfg["num"] = int(cfg["num"])
    return cfg


_EXAMPLES = {"model": "runs/pretrain/<id>/checkpoints/final.safetensors", "targets": "tok_depth@224,caption",
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


def load_image(path: Path, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised [3, size, size] tensor, the uint8 picture at that size)."""
    im = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    a = np.asarray(im)
    x = torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255.0)
    return (x - IMAGENET_MEAN[0]) / IMAGENET_STD[0], a


class Generator:
    """Loads a model, its tokenizers and text tokenizer once; generates and renders batches of inputs."""

    def __init__(self, cfg: dict):
        from fourm.data.text import load_tokenizer as load_text_tokenizer
        from fourm.models.checkpoint import load_pretrained
        from fourm.tokenizers.checkpoint import load_tokenizer

        self.cfg = cfg
        self.model = load_pretrained(cfg["model"]).eval()
        info = self.model.modality_info
        self.image_size = self.model.config["image_size"]
        for d in cfg["cond"] + cfg["targets"]:
            if d not in info:
                raise GenerateError(f"{d!r} is not a modality of {cfg['model']}; it has {sorted(info)}")
        missing = [t for t in cfg["targets"] if t not in self.model.decoder_embeddings]
        if missing:
            raise GenerateError(f"targets {missing}: {cfg['model']} has no decoder for them; it generates "
                                f"{sorted(self.model.decoder_embeddings)}")
        self.text_tokenizer = load_text_tokenizer(cfg["text_tokenizer"]) if cfg["text_tokenizer"] else None
        needs_text = [d for d in cfg["cond"] + cfg["targets"] if kind_of(info[d]) == "seq"]
        if needs_text and self.text_tokenizer is None:
            raise GenerateError(f"{needs_text} are text: pass text_tokenizer=<the model's tokenizer JSON>")
        tokenizers = {}
        for name, path in cfg["tokenizers"].items():
            vq = load_tokenizer(path)
            tokenizers[vq.config.token_modality] = vq
        undecodable = [t for t in cfg["targets"] if kind_of(info[t]) == "img" and t not in tokenizers]
        if undecodable:
            raise GenerateError(f"targets {undecodable} need their VQ-VAE to be drawn: pass "
                                + " ".join(f"tokenizers.{t.removeprefix('tok_').split('@')[0]}=<run>" for t in undecodable))
        self.detok = Detokenizer(tokenizers, self.text_tokenizer, self.image_size)
        self.sampler = GenerationSampler(self.model)

    def schedule(self) -> list[dict]:
        c, info = self.cfg, self.model.modality_info
        seq = [kind_of(info[t]) == "seq" for t in c["targets"]]
        return build_chained_generation_schedules(
            cond_domains=c["cond"], target_domains=c["targets"],
            tokens_per_target=[c["text_tokens"] + 1 if s else info[t]["max_tokens"] for t, s in zip(c["targets"], seq)],
            autoregression_schemes=["autoregressive" if s else c["scheme"] for s in seq],
            decoding_steps=[None if s else c["steps"] for s in seq],
            token_decoding_schedules=[None if s else "cosine" for s in seq],
            temps=[c["text_temp"] if s else c["temp"] for s in seq], temp_schedules=["constant"] * len(seq),
            cfg_scales=[float(c["cfg"])] * len(seq), cfg_schedules=["constant"] * len(seq), modality_info=info)

    def inputs(self, images: torch.Tensor) -> dict:
        """The starting mod_dict for a batch of normalised images: conditions visible, targets empty."""
        c, info, B = self.cfg, self.model.modality_info, images.shape[0]
        mod = {"rgb@224": {"tensor": images}}
        init_full_input_modality(mod, info, "rgb@224", "cpu")
        if c["inpaint"]:
            x0, y0, x1, y1 = (int(v) for v in str(c["inpaint"]).split(","))
            p = info["rgb@224"]["patch_size"]
            g = self.image_size // p
            cols, rows = torch.arange(g) * p, torch.arange(g) * p
            hide = ((rows[:, None] + p > y0) & (rows[:, None] < y1) & (cols[None] + p > x0) & (cols[None] < x1)).flatten()
            mod["rgb@224"]["input_mask"][:, hide] = True
        for name, text in (("caption", c["caption"]), ("det", c["boxes"])):
            if text is not None and name in c["cond"]:  # an edited input: the given text, then [EOS]
                eos = self.text_tokenizer.token_to_id("[EOS]")
                ids = self.text_tokenizer.encode(text).ids + [eos]
                mod[name] = {"tensor": torch.tensor(ids).unsqueeze(0).expand(B, -1).clone()}
                init_full_input_modality(mod, info, name, "cpu", eos_id=eos)
        for t, s in zip(c["targets"], self.schedule_tokens()):
            init_empty_target_modality(mod, info, t, B, s, "cpu")
        return mod

    def schedule_tokens(self) -> list[int]:
        info = self.model.modality_info
        return [self.cfg["text_tokens"] + 1 if kind_of(info[t]) == "seq" else info[t]["max_tokens"] for t in self.cfg["targets"]]

    def predict(self, mod_dict: dict, cond: str, target: str, seed: int, temp: float = 0.0, cfg_scale: float = 1.0,
                steps: int | None = None) -> torch.Tensor:
        """The tokens ``[B, n]`` of an image-like ``target`` generated by MaskGIT from ``mod_dict``'s ``cond`` alone
        (``steps``: the configured ones, at most one a token)."""
        info = self.model.modality_info
        n = info[target]["max_tokens"]
        init_empty_target_modality(mod_dict, info, target, next(iter(mod_dict.values()))["tensor"].shape[0], n, "cpu")
        sched = build_chained_generation_schedules(
            cond_domains=[cond], target_domains=[target], tokens_per_target=[n], autoregression_schemes=["maskgit"],
            decoding_steps=[min(steps or self.cfg["steps"], n)], token_decoding_schedules=["cosine"], temps=[temp],
            temp_schedules=["constant"], cfg_scales=[cfg_scale], cfg_schedules=["constant"], modality_info=info)
        return self.sampler.generate(mod_dict, sched, seed=seed)[target]["tensor"].long()

    def generate(self, images: torch.Tensor, seed: int) -> dict:
        c = self.cfg
        return self.sampler.generate(self.inputs(images), self.schedule(), top_k=int(c["top_k"]), top_p=float(c["top_p"]),
                                     text_tokenizer=self.text_tokenizer, seed=seed)


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
        if mod == "caption":
            texts[t] = value
        elif mod == "det":
            texts[t] = [list(b) for b in value]
        else:
            arrays[t] = value.numpy()
        num_classes = detok.tokenizers[t].config.num_classes if t in detok.tokenizers else 256
        tiles.append(render(mod, value, rgb=pic, num_classes=max(num_classes, 1)))
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
        cfg = parse_args(argv)
        out = run_generate(cfg)
    except (GenerateError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"fourm-bench generate: {e}")
        return 2
    print(f"wrote generations to {out}")
    return 0
