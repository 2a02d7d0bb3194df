"""The inference API: a 4M model with its tokenizers, generating and decoding batches of images' predictions.

    gen = Generator({"checkpoint": ckpt, "tokenizers": {"depth": run}, "text_tokenizer": json, "cond": ["rgb@224"],
                     "targets": ["tok_depth@224"], **fourm.generation.cli.DEFAULTS-like options})
    out = gen.generate(images, seed=0); depth = gen.detok.decode("tok_depth@224", out["tok_depth@224"])

``fourm-bench generate`` (:mod:`fourm.generation.cli`) and ``oob`` (:mod:`fourm.generation.oob`) are built on it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fourm.generation.detokenize import Detokenizer
from fourm.generation.modality_dicts import init_empty_target_modality, init_full_input_modality, kind_of
from fourm.generation.sampler import GenerationSampler
from fourm.generation.schedules import build_chained_generation_schedules
from fourm.pretrain.data import IMAGENET_MEAN, IMAGENET_STD
from fourm.tokenizers import official


class GenerateError(ValueError):
    """A generate call that cannot run; the message names the argument and the fix."""


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
        self.model = load_pretrained(cfg["checkpoint"]).eval()
        info = self.model.modality_info
        self.image_size = self.model.config["image_size"]
        for d in cfg["cond"] + cfg["targets"]:
            if d not in info:
                raise GenerateError(f"{d!r} is not a modality of {cfg['checkpoint']}; it has {sorted(info)}")
        missing = [t for t in cfg["targets"] if t not in self.model.decoder_embeddings]
        if missing:
            raise GenerateError(f"targets {missing}: {cfg['checkpoint']} has no decoder for them; it generates "
                                f"{sorted(self.model.decoder_embeddings)}")
        self.text_tokenizer = load_text_tokenizer(cfg["text_tokenizer"]) if cfg["text_tokenizer"] else None
        needs_text = [d for d in cfg["cond"] + cfg["targets"] if kind_of(info[d]) == "seq"]
        if needs_text and self.text_tokenizer is None:
            raise GenerateError(f"{needs_text} are text: pass text_tokenizer=<the model's tokenizer JSON>")
        tokenizers = {}
        for name, path in cfg["tokenizers"].items():
            vq = load_tokenizer(path)
            if isinstance(vq, official.VQVAE | official.DiVAE):  # serves the folder it is given for, on the model's grid
                vq = self._official(vq, name, cfg)
            tokenizers[vq.config.token_modality] = vq
        undecodable = [t for t in cfg["targets"] if kind_of(info[t]) == "img" and t not in tokenizers]
        if undecodable:
            raise GenerateError(f"targets {undecodable} need their VQ-VAE to be drawn: pass "
                                + " ".join(f"tokenizers.{t.removeprefix('tok_').split('@')[0]}=<run>" for t in undecodable))
        self.detok = Detokenizer(tokenizers, self.text_tokenizer, self.image_size)
        self.sampler = GenerationSampler(self.model)

    def _official(self, vq, name: str, cfg: dict):
        from fourm.modalities import has_spec, spec

        if not has_spec(name) or spec(name).token not in self.model.modality_info:
            raise GenerateError(f"tokenizers.{name}: {cfg['checkpoint']} has no token modality for {name!r}")
        info = self.model.modality_info[spec(name).token]
        grid = self.image_size // info["patch_size"]  # the tokens of the model's grid: their pixels at the tokenizer's patch
        return official.ForModality(vq, name, grid * vq.config["patch_size"], steps=int(cfg.get("decode_steps") or 25),
                                    scheduler=cfg.get("decode_scheduler") or None, seed=int(cfg.get("seed") or 0))

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
