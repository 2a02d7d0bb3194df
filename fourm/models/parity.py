"""Numerical parity with the official 4M code, on the fixture made by it (``tests/fixtures/official_4m``).

`fourm-bench parity [--fixture DIR]` loads the tiny official checkpoint, replays the recorded RGB-encoder call and
the masked multimodal forward, and prints the max abs difference of every recorded output.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from fourm.configs import parse_cli
from fourm.models.checkpoint import load_encoder, load_pretrained, parse_metadata

TOLERANCE = 1e-5


def default_fixture_dir() -> Path:
    """`$FOURM_OFFICIAL_FIXTURE`, else the copy the repository ships in ``tests/fixtures/official_4m``."""
    env = os.environ.get("FOURM_OFFICIAL_FIXTURE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official_4m"


def fixture_batch(io: dict[str, torch.Tensor], order: list[str] | None = None) -> dict:
    """The recorded official batch in its mod_dict order (4M-7: [rgb@224, tok_depth@224, caption])."""
    mod_dict = {}
    for mod in order or ("rgb@224", "tok_depth@224", "caption"):
        prefix = f"mm.in.{mod}."
        d = {k[len(prefix):]: v.clone() for k, v in io.items() if k.startswith(prefix)}
        if mod == "rgb@224":
            d["tensor"] = io["vit.input"]  # not stored twice
        mod_dict[mod] = d
    return mod_dict


FIXTURES = {"4m7": ("tiny_4m7.safetensors", "tiny_4m7_io.safetensors"),
            "4m21": ("tiny_4m21.safetensors", "tiny_4m21_io.safetensors")}


def default_fixture_dir_4m21() -> Path:
    """`$FOURM_OFFICIAL_FIXTURE_4M21`, else ``shared/fixtures/official_4m21`` beside the repository (too large to ship)."""
    env = os.environ.get("FOURM_OFFICIAL_FIXTURE_4M21")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "official_4m21"


# (our output name, fixture tensor name)
PAIRS = [
    ("enc_tokens", "mm.enc.tokens"), ("enc_emb", "mm.enc.emb"), ("enc_mask", "mm.enc.mask"),
    ("enc_mod_mask", "mm.enc.mod_mask"), ("enc_ids_keep", "mm.enc.ids_keep"), ("enc_output", "mm.enc.output"),
    ("dec_tokens", "mm.dec.tokens"), ("dec_emb", "mm.dec.emb"), ("dec_mask", "mm.dec.mask"),
    ("dec_target_ids", "mm.dec.target_ids"), ("dec_attn_mask", "mm.dec.attn_mask"), ("dec_mod_mask", "mm.dec.mod_mask"),
    ("dec_ids_keep", "mm.dec.ids_keep"), ("dec_output", "mm.dec.output"),
]


def run_parity(fixture_dir: str | os.PathLike | None = None, which: str = "4m7") -> dict[str, float]:
    """Max abs difference of every recorded official output (name -> float); ``which``: "4m7" or "4m21"."""
    from safetensors import safe_open

    root = Path(fixture_dir) if fixture_dir else (default_fixture_dir() if which == "4m7" else default_fixture_dir_4m21())
    ckpt_name, io_name = FIXTURES[which]
    ckpt, io_path = root / ckpt_name, root / io_name
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} not found; set FOURM_OFFICIAL_FIXTURE{'' if which == '4m7' else '_4M21'} to the "
                                f"official_{which[1:]} fixture folder")
    io = load_file(str(io_path))
    with safe_open(str(io_path), "pt") as f:
        meta = parse_metadata(f.metadata() or {})
    order = meta.get("mod_dict_order") or ["rgb@224", "tok_depth@224", "caption"]
    n_enc, n_dec = int(meta.get("num_encoder_tokens", 36)), int(meta.get("num_decoder_tokens", 21))
    seed = int(meta.get("python_random_seed_before_call", 1234))
    diff = lambda a, b: (a.double() - b.double()).abs().max().item() if a.numel() or b.numel() else 0.0  # noqa: E731
    out = {}
    with torch.no_grad():
        enc = load_encoder(ckpt).eval()
        emb, _ = enc.embed(io["vit.input"])
        out["vit.tokens_embedded"] = diff(emb, io["vit.tokens_embedded"])
        _, feats, _ = enc.forward_features(io["vit.input"], out_indices=[enc.depth - 1])
        out["vit.tokens_pre_norm"] = diff(feats[-1], io["vit.tokens_pre_norm"])
        out["vit.output"] = diff(enc(io["vit.input"]), io["vit.output"])

        model = load_pretrained(ckpt).eval()
        r = model(fixture_batch(io, order), n_enc, n_dec, loss_type="mod", return_all=True, rng=random.Random(seed))
        for ours, theirs in PAIRS:
            out[theirs] = diff(r[ours], io[theirs])
        for mod in sorted(k[len("mm.logits."):] for k in io if k.startswith("mm.logits.")):
            out[f"mm.logits.{mod}"] = diff(r["logits"][mod], io[f"mm.logits.{mod}"])
            out[f"mm.mod_loss.{mod}"] = diff(r["mod_loss"][mod].reshape(1), io[f"mm.mod_loss.{mod}"])
        out["mm.loss"] = diff(r["loss"].reshape(1), io["mm.loss"])
    return out


def cli(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fourm-bench parity", description=__doc__)
    p.add_argument("--fixture", default=None, help="folder with the tiny checkpoint and its io file")
    p.add_argument("--which", choices=sorted(FIXTURES), default="4m7", help="the 4M-7 or the 4M-21 fixture")
    args = parse_cli(p, argv)
    diffs = run_parity(args.fixture, args.which)
    width = max(map(len, diffs))
    for k, v in diffs.items():
        print(f"{k:<{width}}  max|diff| = {v:.2e}  {'ok' if v <= TOLERANCE else 'FAIL'}")
    worst = max(diffs.values())
    print(f"parity with the official 4M code: {'PASS' if worst <= TOLERANCE else 'FAIL'} (worst {worst:.2e}, tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1
