"""Pseudo-labelling: run a labeler over an RGB folder and write one modality folder (the 4M way to get depth,
normals, CLIP features... for images that only have RGB).

    fourm-bench label --in world/train --labeler timm_features [--out DIR] [--batch-size 16]

Labelers are registered by name. Built in: ``world_gt_<modality>`` (copies the world's ground truth, a perfect
labeler for tests and upper bounds), ``timm_features`` (feature maps of a randomly initialised timm model, saved as
.npy), and the 4M-21 labelers of :mod:`fourm.data.labelers21` (Canny and SAM edges, SAM instances, colour palettes,
metadata, DINOv2/ImageBind/CLIP maps and global embeddings). Runs are batched and resumable.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fourm.configs import parse_cli
from fourm.data import labelers21  # noqa: F401  (the 4M-21 labelers register themselves)
from fourm.data.labeler import LABELERS, Labeler, create_labeler, register_labeler  # noqa: F401  (the labeling API)
from fourm.data.layouts import FOURM_MODALITIES, folder_modality

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPEG", ".webp")


# --- built-in labelers -------------------------------------------------------------------------------------------
class WorldGroundTruth(Labeler):
    """Copies the world's ground truth of a modality for each stem (read from the world split next to the RGB)."""

    def __init__(self, modality: str, world_split: Path):
        self.name, self.modality, self.world_split = f"world_gt_{modality}", modality, Path(world_split)
        self.codec = FOURM_MODALITIES[modality]

    def __call__(self, images, stems):
        labels = []
        for stem in stems:
            path = self.codec.path(self.world_split, stem)
            if not path.exists():
                raise FileNotFoundError(f"{path}: {self.name} needs the world's {self.modality} for stem {stem!r} "
                                        f"(is {self.world_split} a world split made by `fourm-bench world`?)")
            labels.append(self.codec.decode(path))
        return labels


for _m in FOURM_MODALITIES:
    if FOURM_MODALITIES[_m].value != "image":  # every world modality but the images themselves
        register_labeler(f"world_gt_{_m}")(lambda in_dir, _m=_m, **_: WorldGroundTruth(_m, in_dir.parent))


class TimmFeatures(Labeler):
    """Feature maps (C, h, w) of a timm model with random weights (seeded), stored as float16 .npy.

    Stands in for CLIP/DINO feature labelers, which differ only in their weights.
    """

    def __init__(self, model: str = "resnet18", out_index: int = 3, seed: int = 0, device: str = "cpu"):
        import timm

        torch.manual_seed(seed)  # random but reproducible weights: the same labels on every run
        self.net = timm.create_model(model, pretrained=False, features_only=True, out_indices=(out_index,)).eval().to(device)
        cfg = self.net.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
        self.device = device
        self.name, self.modality = "timm_features", f"feat_{model}"
        self.codec = folder_modality(self.modality)

    @torch.no_grad()
    def __call__(self, images, stems):
        x = (images.to(self.device) - self.mean) / self.std
        feats = self.net(x)[0]
        return [f.cpu().numpy().astype(np.float16) for f in feats]


@register_labeler("timm_features")
def _timm_features(in_dir: Path, model: str = "resnet18", **options) -> Labeler:
    return TimmFeatures(model=model, **options)


# --- running a labeler over a folder -----------------------------------------------------------------------------
def rgb_folder(in_dir: str | os.PathLike) -> Path:
    """The folder of RGB images: ``in_dir`` itself, or ``in_dir/rgb`` for a 4M split folder."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"--in {in_dir}: no such folder (pass a folder of RGB images or a split with rgb/)")
    return in_dir / "rgb" if (in_dir / "rgb").is_dir() else in_dir


def _read_rgb(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for bad files; all mean the same to the user
        raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: {e}); replace or delete it and re-run") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def label_folder(in_dir: str | os.PathLike, labeler: Labeler, out_dir: str | os.PathLike | None = None,
                 batch_size: int = 16) -> dict:
    """Label every image of ``in_dir`` without an output yet; returns {"labelled", "skipped", "out"}.

    The default output folder is ``<split>/<labeler.modality>`` next to the rgb folder.
    """
    rgb_dir = rgb_folder(in_dir)
    out_dir = Path(out_dir) if out_dir is not None else rgb_dir.parent / labeler.modality
    images = sorted(p for p in rgb_dir.iterdir() if p.suffix in IMAGE_EXTS and not p.name.startswith("."))
    if not images:
        raise FileNotFoundError(f"{rgb_dir}: no images ({', '.join(IMAGE_EXTS)}) to label")
    todo = [p for p in images if not labeler.output_path(out_dir, p.stem).exists()]
    bar = tqdm(total=len(todo), desc=f"label {labeler.name}", unit="img")
    for start in range(0, len(todo), batch_size):
        chunk = [(p, _read_rgb(p)) for p in todo[start:start + batch_size]]
        # images of different sizes cannot share a tensor: label each size group as its own batch
        by_shape: dict[tuple, list] = {}
        for p, img in chunk:
            by_shape.setdefault(tuple(img.shape), []).append((p, img))
        for group in by_shape.values():
            stems = [p.stem for p, _ in group]
            labels = labeler(torch.stack([img for _, img in group]), stems)
            if len(labels) != len(stems):
                raise RuntimeError(f"labeler {labeler.name} returned {len(labels)} labels for {len(stems)} images")
            for stem, label in zip(stems, labels):
                labeler.save(labeler.output_path(out_dir, stem), label)
        bar.update(len(chunk))
    bar.close()
    return {"labelled": len(todo), "skipped": len(images) - len(todo), "out": out_dir}


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fourm-bench label", description=__doc__.splitlines()[0])
    p.add_argument("--in", dest="in_dir", required=True, help="folder of RGB images, or a split folder with rgb/")
    p.add_argument("--labeler", required=True, help=f"one of: {', '.join(sorted(LABELERS))}")
    p.add_argument("--out", default=None, help="output folder (default: <split>/<labeler modality>)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default=None, help="timm_features, vit_features, vit_global: the timm model name")
    p.add_argument("--name", default=None, help="vit_features, vit_global: the modality folder (e.g. dinov2, clip)")
    p.add_argument("--checkpoint", default=None,
                   help="vit_features, vit_global: a local weights file; t5_caption: a local T5 model folder")
    p.add_argument("--device", default="cpu")
    args = parse_cli(p, argv)
    options = {}
    if args.labeler in ("timm_features", "vit_features", "vit_global"):
        options = {"device": args.device, **({"model": args.model} if args.model else {})}
        if args.labeler != "timm_features":
            options.update({k: v for k, v in (("folder", args.name), ("checkpoint", args.checkpoint)) if v})
    elif args.labeler == "t5_caption":
        options = {"device": args.device, **({"checkpoint": args.checkpoint} if args.checkpoint else {})}
    try:
        labeler = create_labeler(args.labeler, rgb_folder(args.in_dir), **options)
        result = label_folder(args.in_dir, labeler, args.out, args.batch_size)
    except (KeyError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"fourm-bench label: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"label {labeler.name}: {result['labelled']} labelled, {result['skipped']} already done -> {result['out']}")
    return 0

