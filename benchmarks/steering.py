"""Steering a 4M-21 model: RGB generated from metadata or a colour palette alone follows what was asked.

    python -m benchmarks.steering --work data/world21 [--num 32] [--steps 8] [--temp 1.0] [--cfg 1.0 3.0]

Reads the model, the RGB tokenizer and the text tokenizer of a ``fourm-bench pipeline world21`` work folder. For two
requests at the ends of what the world's validation images have (their minimum and maximum):

* metadata: the single chunk ``brightness`` (``v1=4 v0=<bin>``) -> the mean brightness (HSV value) of the decoded RGB;
* colour palette: one colour (``v1=1 v0=L v0=a v0=b``, the world's darkest / lightest dominant colours) -> the mean
  CIELAB lightness of the decoded RGB.

``num`` RGB token grids are generated per request (MaskGIT, ``temp``, seeds 0..), at each classifier-free guidance
scale. The baseline in the same run is the spread of the measured statistic over the world's own validation images:
a steer counts when the gap between the two requests is in the requested direction and larger than two standard
errors.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fourm.data.labelers21 import METADATA_RANGES, metadata_bins
from fourm.data.serialize import METADATA_TYPES, lab_bins, metadata_to_chunks, palette_to_text


def _pipeline_outputs(work: Path) -> dict:
    """The pretrained checkpoint, RGB tokenizer, text tokenizer and world of a world21 pipeline work folder."""
    pre = sorted((work / "pretrain").glob("*/metrics.json"))
    if not pre:
        raise FileNotFoundError(f"{work}/pretrain: no finished pretraining; run `fourm-bench pipeline world21` first")
    rgb = [d for d in (work / "tokenizer").iterdir() if (d / "DONE").exists()
           and json.loads((d / "metrics.json").read_text()).get("modality") == "rgb"]
    text = sorted((work / "text_tokenizer").glob("*/text_tokenizer.json"))
    world = sorted((work / "world").glob("*/world"))
    if not (rgb and text and world):
        raise FileNotFoundError(f"{work}: needs a finished rgb tokenizer, text tokenizer and world")
    return {"model": json.loads(pre[0].read_text())["checkpoint"], "rgb": str(rgb[0]), "text": str(text[0]),
            "world": world[0]}


def _sequence_input(tok, text: str | list[str], n: int) -> dict:
    """A sequence modality given in full (no masking) to ``n`` rows: what the model reads as a condition."""
    chunks = [text] if isinstance(text, str) else text
    ids = [i for c in chunks for i in tok.encode(c).ids] + [tok.token_to_id("[EOS]")]
    tensor = torch.tensor([ids] * n)
    mask = torch.zeros_like(tensor, dtype=torch.bool)
    return {"tensor": tensor, "input_mask": mask, "target_mask": torch.ones_like(mask),
            "decoder_attention_mask": torch.zeros_like(tensor)}


@torch.no_grad()
def _generate_rgb(gen, cond: str, value: dict, n: int, args, scale: float, seed: int) -> list[np.ndarray]:
    from fourm.generation.modality_dicts import init_empty_target_modality
    from fourm.generation.schedules import build_chained_generation_schedules

    info = gen.model.modality_info
    mod = {cond: value}
    t = "tok_rgb@224"
    init_empty_target_modality(mod, info, t, n, info[t]["max_tokens"], "cpu")
    sched = build_chained_generation_schedules(
        cond_domains=[cond], target_domains=[t], tokens_per_target=[info[t]["max_tokens"]],
        autoregression_schemes=["maskgit"], decoding_steps=[args.steps], token_decoding_schedules=["cosine"],
        temps=[args.temp], temp_schedules=["constant"], cfg_scales=[scale], cfg_schedules=["constant"],
        modality_info=info, cfg_grow_conditioning=True)
    out = gen.sampler.generate(mod, sched, seed=seed)
    return [x.permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float64) for x in gen.detok.decode(t, out[t])]


def brightness(rgb: np.ndarray) -> float:
    return float(rgb.max(-1).mean())  # HSV value


def lightness(rgb: np.ndarray) -> float:
    from skimage.color import rgb2lab

    return float(rgb2lab(rgb)[..., 0].mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the work folder of `fourm-bench pipeline world21`")
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--temp", type=float, default=1.0)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0])
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from fourm.generation.cli import Generator

    found = _pipeline_outputs(Path(args.work))
    gen = Generator(dict(model=found["model"], text_tokenizer=found["text"], tokenizers={"rgb": found["rgb"]},
                         cond=[], targets=["tok_rgb@224"], steps=args.steps, scheme="maskgit", temp=args.temp,
                         text_temp=0.0, top_p=0.0, top_k=0, text_tokens=64, cfg=1.0, inpaint=None, caption=None,
                         boxes=None))
    val = found["world"] / "val"
    meta = [json.loads(p.read_text()) for p in sorted((val / "metadata").glob("*.json"))]
    palettes = [json.loads(p.read_text())["1"][0] for p in sorted((val / "color_palette").glob("*.json"))]
    from fourm.data.layouts import FOURM_MODALITIES

    images = [FOURM_MODALITIES["rgb"].decode(p).astype(np.float64) / 255 for p in sorted((val / "rgb").glob("*.png"))]

    b = np.array([m["brightness"] for m in meta])
    L = np.array([p[0] for p in palettes])
    requests = {
        "metadata brightness": ("metadata", brightness, {
            "dark": metadata_to_chunks(metadata_bins({"brightness": float(b.min())})),
            "bright": metadata_to_chunks(metadata_bins({"brightness": float(b.max())}))}),
        "palette lightness": ("color_palette", lightness, {
            "dark": palette_to_text([lab_bins(palettes[int(np.argmin(L))])]),
            "light": palette_to_text([lab_bins(palettes[int(np.argmax(L))])])}),
    }
    assert METADATA_TYPES.index("brightness") == 4 and "brightness" in METADATA_RANGES
    for name, (cond, stat, asks) in requests.items():
        world = np.array([stat(im) for im in images])
        for scale in args.cfg:
            got = {}
            for label, text in asks.items():
                value = _sequence_input(gen.text_tokenizer, text, args.num)
                vals = np.array([stat(x) for x in _generate_rgb(gen, cond, value, args.num, args, scale, seed=0)])
                got[label] = (vals.mean(), vals.std(), text if isinstance(text, str) else " | ".join(text))
            (lo, hi) = list(got)
            gap = got[hi][0] - got[lo][0]
            noise = 2 * np.hypot(got[hi][1], got[lo][1]) / np.sqrt(args.num)  # two standard errors of the gap
            print(f"{name:20s} cfg {scale:.1f}: " + ", ".join(f"{k} [{v[2]}] {v[0]:.3f} ± {v[1]:.3f}" for k, v in got.items())
                  + f"; gap {gap:+.3f} = {gap / world.std():+.2f} x the world's std ({world.mean():.3f} ± {world.std():.3f})"
                  + ("  -> steered" if gap > noise else f"  -> not steered (2 s.e. = {noise:.3f})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
