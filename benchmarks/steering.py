"""Steering a 4M-21 model: RGB generated from metadata or a colour palette alone follows what was asked.

    python -m benchmarks.steering --work data/world21 [--recipe world21] [--images 4] [--num 8] [--steps 8] [--temp 1.0] [--cfg 1.0 3.0]

Reads the model, the RGB tokenizer and the text tokenizer of a ``fourm-bench pipeline world21`` work folder. The
requests are the labels of the world's own validation images at both ends of a statistic (the ``images`` darkest and
brightest), so each asks for something the world has:

* metadata -> the mean brightness (HSV value) of the decoded RGB: the brightness chunk alone (``v1=4 v0=<bin>``), and
  all the image's metadata chunks;
* colour palette -> the mean CIELAB lightness of the decoded RGB: the dominant colour alone (``v1=1 v0=L v0=a v0=b``),
  and the full palette.

``num`` RGB token grids are generated per image (MaskGIT, ``temp``), at each classifier-free guidance scale. The
baseline is what was asked, measured on the same images: the printed gap is the generated high-minus-low difference
as a fraction of the asked one; a steer counts when it is positive beyond two standard errors.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fourm.data.labelers21 import metadata_bins
from fourm.data.serialize import METADATA_TYPES, lab_bins, metadata_to_chunks, palette_to_text


def _pipeline_outputs(recipe: str, work: Path) -> dict:
    """The pretrained checkpoint, RGB tokenizer, text tokenizer and world that ``recipe`` puts in ``work``."""
    from ablations.pipeline import expand, load_recipe

    path, cfg = load_recipe(recipe)
    stages = {s.name: Path(s.job.run_dir) for s in expand(cfg, work, work / "unused-out", path)}
    pretrain = next(d for name, d in stages.items() if name.startswith("pretrain "))
    need = {"pretraining": pretrain, "rgb tokenizer": stages["tokenizer rgb"],
            "text tokenizer": stages["text tokenizer"], "world": stages["world"]}
    missing = [f"{k} ({d})" for k, d in need.items() if not (d / "DONE").exists()]
    if missing:
        raise FileNotFoundError(f"{work}: not finished: {', '.join(missing)}; run `fourm-bench pipeline {recipe} "
                                f"--work {work}` first")
    return {"model": json.loads((pretrain / "metrics.json").read_text())["checkpoint"], "rgb": str(need["rgb tokenizer"]),
            "text": str(need["text tokenizer"] / "text_tokenizer.json"), "world": need["world"] / "world"}


def _sequence_input(tok, cond: str, text: str | list[str], n: int) -> dict:
    """The mod_dict of ``n`` rows that each hold ``text`` (a string or its chunks) as the whole ``cond`` sequence."""
    from fourm.generation.modality_dicts import full_sequence_input

    chunks = [text] if isinstance(text, str) else text
    ids = [i for c in chunks for i in tok.encode(c).ids] + [tok.token_to_id("[EOS]")]
    return full_sequence_input({}, cond, [ids] * n, tok.token_to_id("[PAD]"))


@torch.no_grad()
def _generate_rgb(gen, cond: str, mod: dict, args, scale: float, seed: int) -> list[np.ndarray]:
    tokens = gen.predict(mod, cond, "tok_rgb@224", seed, temp=args.temp, cfg_scale=scale, steps=args.steps)
    return [x.permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float64)
            for x in gen.detok.decode("tok_rgb@224", {"tensor": tokens})]


def brightness(rgb: np.ndarray) -> float:
    return float(rgb.max(-1).mean())  # HSV value


def lightness(rgb: np.ndarray) -> float:
    from skimage.color import rgb2lab

    return float(rgb2lab(rgb)[..., 0].mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the work folder of `fourm-bench pipeline world21`")
    ap.add_argument("--recipe", default="world21", help="the pipeline recipe that filled --work (default world21)")
    ap.add_argument("--images", type=int, default=4, help="images at each end of the world's range")
    ap.add_argument("--num", type=int, default=8, help="generations per image")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--temp", type=float, default=1.0)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0])
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from fourm.generation.generator import Generator

    found = _pipeline_outputs(args.recipe, Path(args.work).resolve())
    gen = Generator(dict(checkpoint=found["model"], text_tokenizer=found["text"], tokenizers={"rgb": found["rgb"]},
                         cond=[], targets=["tok_rgb@224"], steps=args.steps, scheme="maskgit", temp=args.temp,
                         text_temp=0.0, top_p=0.0, top_k=0, text_tokens=64, cfg=1.0, inpaint=None, caption=None,
                         boxes=None))
    val = found["world"] / "val"
    from fourm.data.layouts import FOURM_MODALITIES

    stems = sorted(p.stem for p in (val / "metadata").glob("*.json"))
    meta = {s: json.loads((val / "metadata" / f"{s}.json").read_text()) for s in stems}
    palettes = {s: json.loads((val / "color_palette" / f"{s}.json").read_text()) for s in stems}
    images = {s: FOURM_MODALITIES["rgb"].decode(FOURM_MODALITIES["rgb"].path(val, s)).astype(np.float64) / 255
              for s in stems}
    biggest = str(max(int(k) for k in next(iter(palettes.values()))))
    # request name -> (condition modality, statistic of the RGB, the condition text of an image's labels)
    requests = {
        "metadata, brightness only": ("metadata", brightness,
                                      lambda s: metadata_to_chunks(metadata_bins({"brightness": meta[s]["brightness"]}))),
        f"metadata, all {len(METADATA_TYPES)} types": ("metadata", brightness,
                                                       lambda s: metadata_to_chunks(metadata_bins(meta[s]))),
        "palette, 1 colour": ("color_palette", lightness, lambda s: palette_to_text([lab_bins(palettes[s]["1"][0])])),
        f"palette, {biggest} colours": ("color_palette", lightness,
                                        lambda s: palette_to_text([lab_bins(c) for c in palettes[s][biggest]])),
    }
    for name, (cond, stat, text_of) in requests.items():
        world = {s: stat(im) for s, im in images.items()}
        order = sorted(stems, key=world.get)
        ends = {"low": order[:args.images], "high": order[-args.images:]}  # the world's own extremes
        for scale in args.cfg:
            got = {}
            for end, group in ends.items():
                vals = []
                for i, s in enumerate(group):
                    mod = _sequence_input(gen.text_tokenizer, cond, text_of(s), args.num)
                    vals += [stat(x) for x in _generate_rgb(gen, cond, mod, args, scale, seed=i)]
                got[end] = (np.mean(vals), np.std(vals) / np.sqrt(len(vals)), np.mean([world[s] for s in group]))
            gap, asked = got["high"][0] - got["low"][0], got["high"][2] - got["low"][2]
            noise = 2 * np.hypot(got["high"][1], got["low"][1])
            print(f"{name:26s} cfg {scale:.1f}: asked {got['low'][2]:.3f} / {got['high'][2]:.3f} -> generated "
                  f"{got['low'][0]:.3f} / {got['high'][0]:.3f}; gap {gap:+.3f} = {gap / asked:+.0%} of the asked gap"
                  + ("  -> steered" if gap > noise else f"  -> not steered (2 s.e. = {noise:.3f})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
