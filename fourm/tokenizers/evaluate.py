"""`fourm-bench tokenize eval`: a tokenizer's reconstruction ceiling on a dataset, in its modality's metric, next to
the best constant prediction (fit on the same images), so its ceiling is known before an out-of-the-box number is
trusted.

    fourm-bench tokenize eval tokenizer=<run | file | official file | Hugging Face id> modality=depth data=<dataset>
    fourm-bench tokenize eval tokenizer=... modality=depth folder=/datasets/nyuv2/annotations/test   # a standard layout

Metrics by the modality's spec: RGB MAE / PSNR, depth delta1 / abs rel (an official tokenizer's standardised depth
after a per-image least-squares scale and shift), normals angular error, semseg pixel accuracy / mIoU, feature maps
cosine / MSE, edges F1.
"""
from __future__ import annotations

import json

import torch
from tqdm import tqdm

from fourm.files import atomic_write_json
from fourm.modalities import spec
from fourm.modalities.metrics import ReconstructionMeter, constant_prediction, fit_constant, scale_shift_aligned
from fourm.threads import torch_threads
from fourm.tokenizers import official
from fourm.tokenizers.checkpoint import load_tokenizer
from fourm.tokenizers.modality_io import list_stems, load_modality, split_root


def evaluate_tokenizer(cfg: dict, progress: bool = True) -> dict:
    with torch_threads(cfg.get("threads")):
        return _evaluate(cfg, progress)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPEG")


def load_folder(folder, modality: str, size: int, num: int | None = None, progress: bool = True) -> torch.Tensor:
    """Every file of a flat folder in a standard layout (``nyuv2/annotations/test``: 16-bit depth PNGs in mm,
    ``ade20k/annotations/validation``: class-id PNGs, ``in1k/val/<class>``: RGB JPEGs), read with the modality's
    codec, centre-cropped and resized like a 4M-layout folder."""
    from pathlib import Path

    from fourm.tokenizers.modality_io import center_box

    s = spec(modality)
    exts = IMAGE_EXTS if s.ext == ".png" else (s.ext,)
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in exts and not p.name.startswith("."))[: num or None]
    if not files:
        raise FileNotFoundError(f"folder={folder}: no {'/'.join(exts)} files of {modality}")
    out = []
    for p in tqdm(files, desc=f"load {modality}", unit="img", disable=not progress):
        x = s.to_tensor(s.decode(p))
        out.append(s.crop_resize_flip(x, center_box(*x.shape[-2:]), size, False))
    return torch.stack(out)


@torch.no_grad()
def _evaluate(cfg: dict, progress: bool) -> dict:
    modality = cfg["modality"]["name"]
    if not cfg.get("data") and not cfg.get("folder"):
        raise ValueError("give data=<4M-layout dataset> or folder=<a folder of the modality's files>")
    s = spec(modality)
    if s.metric is None:
        raise ValueError(f"modality={modality}: its spec names no metric; image-like modalities have one")
    tok = load_tokenizer(cfg["tokenizer"])
    relative = False
    if isinstance(tok, official.VQVAE | official.DiVAE):
        tok = official.ForModality(tok, modality, int(cfg["image_size"]), steps=int(cfg["decode_steps"]),
                                   scheduler=cfg["decode_scheduler"] or None, seed=int(cfg["seed"]))
        relative = tok.kind == "depth"
    elif getattr(tok.config, "modality", None) != modality:
        raise ValueError(f"tokenizer={cfg['tokenizer']} is a {getattr(tok.config, 'modality', '?')!r} tokenizer, not {modality!r}")
    if cfg.get("folder"):
        x = load_folder(cfg["folder"], modality, tok.config.image_size, cfg["num"], progress)
    else:
        root = split_root(cfg["data"], cfg["split"])
        stems = list_stems(root, [modality])[: cfg["num"] or None]
        x = load_modality(root, modality, tok.config.image_size, stems, progress=progress)
    num_classes = getattr(tok.config, "num_classes", 0) or int(x.max()) + 1 if s.metric == "semseg" else 0
    ignore = getattr(tok.config, "ignore_index", 255)
    meter = ReconstructionMeter(s.metric, num_classes, ignore)
    base = ReconstructionMeter(s.metric, num_classes, ignore)
    const = fit_constant(s.metric, x, num_classes, ignore)
    bs = int(cfg["batch_size"])
    for i in tqdm(range(0, len(x), bs), desc=f"eval {modality}", unit="batch", disable=not progress):
        xb = x[i: i + bs]
        rec = tok.reconstruct(xb)
        meter.update(scale_shift_aligned(rec, xb) if relative else rec, xb)
        base.update(constant_prediction(const, xb), xb)
    metrics = {"modality": modality, "tokenizer": str(cfg["tokenizer"]), "samples": len(x),
               "image_size": tok.config.image_size, "grid": tok.config.grid, "metric": s.metric,
               "reconstruction": meter.compute(), "constant": base.compute(),
               "depth_alignment": ("scale_shift" if relative else "none") if s.metric == "depth" else None}
    if cfg.get("out"):
        atomic_write_json(cfg["out"], metrics)
    return metrics


def cli(argv: list[str]) -> int:
    """``fourm-bench tokenize eval key=value ...`` (hydra overrides of configs/eval.yaml)."""
    from omegaconf import OmegaConf

    from fourm.tokenizers.train import CONFIG_DIR, compose_config

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print((CONFIG_DIR / "eval.yaml").read_text())
        return 0
    cfg = compose_config("eval", [a for a in argv if a != "--print-config"])
    if "--print-config" in argv:
        print(OmegaConf.to_yaml(cfg))
        return 0
    m = evaluate_tokenizer(cfg)
    print(json.dumps({k: m[k] for k in ("modality", "samples", "grid", "reconstruction", "constant")}, indent=2))
    return 0
