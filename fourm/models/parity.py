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

from fourm.models.checkpoint import load_encoder, load_pretrained

TOLERANCE = 1e-5


def default_fixture_dir() -> Path:
    """`$FOURM_OFFICIAL_FIXTURE`, else the copy the repository ships in ``tests/fixtures/official_4m``."""
    env = os.environ.get("FOURM_OFFICIAL_FIXTURE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official_4m"


def fixture_batch(io: dict[str, torch.Tensor]) -> dict:
    """The recorded official batch, in mod_dict order [rgb@224, tok_depth@224, caption]."""
    mod_dict = {}
    for mod in ("rgb@224", "tok_depth@224", "caption"):
        prefix = f"mm.in.{mod}."
        d = {k[len(prefix):]: v for k, v in io.items() if k.startswith(prefix)}
        if mod == "rgb@224":
            d["tensor"] = io["vit.input"]  # not stored twice
        mod_dict[mod] = d
    return mod_dict


# (our output name, fixture tensor name)
PAIRS = [
    ("enc_tokens", "mm.enc.tokens"), ("enc_emb", "mm.enc.emb"), ("enc_mask", "mm.enc.mask"),
    ("enc_mod_mask", "mm.enc.mod_mask"), ("enc_ids_keep", "mm.enc.ids_keep"), ("enc_output", "mm.enc.output"),
    ("dec_tokens", "mm.dec.tokens"), ("dec_emb", "mm.dec.emb"), ("dec_mask", "mm.dec.mask"),
    ("dec_target_ids", "mm.dec.target_ids"), ("dec_attn_mask", "mm.dec.attn_mask"), ("dec_mod_mask", "mm.dec.mod_mask"),
    ("dec_ids_keep", "mm.dec.ids_keep"), ("dec_output", "mm.dec.output"),
]


def run_parity(fixture_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Max abs difference of every recorded official output (name -> float)."""
    root = Path(fixture_dir) if fixture_dir else default_fixture_dir()
    ckpt, io_path = root / "tiny_4m7.safetensors", root / "tiny_4m7_io.safetensors"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} not found; set FOURM_OFFICIAL_FIXTURE to the official_4m fixture folder")
    io = load_file(str(io_path))
    diff = lambda a, b: (a.double() - b.double()).abs().max().item()  # noqa: E731
    out = {}
    with torch.no_grad():
        enc = load_encoder(ckpt).eval()
        emb, _ = enc.embed(io["vit.input"])
        out["vit.tokens_embedded"] = diff(emb, io["vit.tokens_embedded"])
        _, feats, _ = enc.forward_features(io["vit.input"], out_indices=[enc.depth - 1])
        out["vit.tokens_pre_norm"] = diff(feats[-1], io["vit.tokens_pre_norm"])
        out["vit.output"] = diff(enc(io["vit.input"]), io["vit.output"])

        model = load_pretrained(ckpt).eval()
        meta_seed = 1234  # python `random` seed recorded in the io file's metadata
        r = model(fixture_batch(io), 36, 21, loss_type="mod", return_all=True, rng=random.Random(meta_seed))
        for ours, theirs in PAIRS:
            out[theirs] = diff(r[ours], io[theirs])
        for mod in ("caption", "tok_depth@224"):
            out[f"mm.logits.{mod}"] = diff(r["logits"][mod], io[f"mm.logits.{mod}"])
            out[f"mm.mod_loss.{mod}"] = diff(r["mod_loss"][mod].reshape(1), io[f"mm.mod_loss.{mod}"])
        out["mm.loss"] = diff(r["loss"].reshape(1), io["mm.loss"])
    return out


def cli(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fourm-bench parity", description=__doc__)
    p.add_argument("--fixture", default=None, help="folder with tiny_4m7.safetensors and tiny_4m7_io.safetensors")
    args = p.parse_args(argv)
    diffs = run_parity(args.fixture)
    width = max(map(len, diffs))
    for k, v in diffs.items():
        print(f"{k:<{width}}  max|diff| = {v:.2e}  {'ok' if v <= TOLERANCE else 'FAIL'}")
    worst = max(diffs.values())
    print(f"parity with the official 4M code: {'PASS' if worst <= TOLERANCE else 'FAIL'} (worst {worst:.2e}, tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1
