"""SAM instances as 4M-21 text: each instance mask cropped to its box and tokenized to 16 tokens by a mask VQ-VAE
(32 px, 3 stages -> 4 x 4), then written per query point as ``point v0=y v1=x polygon <box> <16 tokens> ...``
(:func:`fourm.data.serialize.sam_to_text`).

    masks = read the sam_instance id map (fourm-bench label --labeler sam_instance)
    tok = train_mask_tokenizer(instance_crops(maps))       # or load a trained one
    text = sam_instance_text(ids, tok, num_points=7, seed=0)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fourm.data.labelers21 import instance_box, query_points
from fourm.modalities.codecs import read_png
from fourm.data.serialize import PointInstances, sam_to_text
from fourm.modalities.metrics import ReconstructionMeter
from fourm.tokenizers.mlp_vqvae import fit_in_memory
from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig

CROP = 32  # px of a mask crop: 3 stride-2 stages give the 4 x 4 = 16 tokens of an instance


def mask_tokenizer_config(**overrides) -> VQVAEConfig:
    cfg = dict(modality="sam_mask", token_modality="sam_instance", image_size=CROP, channels=(16, 32, 64), code_dim=16,
               codebook_size=1024, restart_after=20)
    cfg.update(overrides)
    return VQVAEConfig(**cfg)


def crop_mask(mask: np.ndarray, size: int = CROP) -> torch.Tensor:
    """A boolean mask cut to its tight box and resized to ``size`` x ``size``: float [1, size, size] in {0, 1}."""
    ys, xs = np.nonzero(mask)
    box = torch.from_numpy(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32))
    return (F.interpolate(box[None, None], size=(size, size), mode="bilinear", align_corners=False)[0] > 0.5).float()


def load_id_maps(split: str | os.PathLike) -> list[np.ndarray]:
    """Every ``<split>/sam_instance/*.png`` id map (fourm-bench label --labeler sam_instance), in stem order."""
    folder = Path(split) / "sam_instance"
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{folder}: no id maps (write them with `fourm-bench label --labeler sam_instance`)")
    return [read_png(f).astype(np.int64) for f in files]


def instance_crops(id_maps: list[np.ndarray], size: int = CROP) -> torch.Tensor:
    """Every instance of every map as a crop [N, 1, size, size]: the mask tokenizer's training set."""
    crops = [crop_mask(ids == i, size) for ids in id_maps for i in np.unique(ids) if i != 0]
    return torch.stack(crops)


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_mask_tokenizer(crops: torch.Tensor, config: VQVAEConfig | None = None, steps: int = 300, batch_size: int = 32,
                         lr: float = 3e-3, seed: int = 0) -> VQVAE:
    """Fit a mask tokenizer on crops held in memory (seeded batches, random horizontal flips)."""
    torch.manual_seed(seed)
    model = VQVAE(config or mask_tokenizer_config())
    fit_in_memory(model, crops, steps=steps, batch_size=batch_size, lr=lr, seed=seed, augment=_flip)
    return model


def train_mask_folder(data: str | os.PathLike, *, steps: int, seed: int = 0, batch_size: int = 32, split: str = "train",
                      val_split: str = "val", **model) -> tuple[VQVAE, dict]:
    """Fit the mask tokenizer (``model``: :func:`mask_tokenizer_config` overrides) on every instance of
    ``<data>/<split>/sam_instance``; IoU on ``<data>/<val_split>`` (when labelled) next to the whole box's."""
    crops = instance_crops(load_id_maps(Path(data) / split))
    tok = train_mask_tokenizer(crops, mask_tokenizer_config(**model), steps=steps, batch_size=batch_size, seed=seed)
    metrics = {"instances": len(crops)}
    val = Path(data) / val_split
    if (val / "sam_instance").is_dir():
        metrics["val"] = mask_metrics(tok, instance_crops(load_id_maps(val)))
    return tok, metrics


@torch.no_grad()
def mask_metrics(model: VQVAE, crops: torch.Tensor) -> dict[str, dict[str, float]]:
    """IoU of the crops through the tokens, and of the trivial baseline (the whole box)."""
    ours, box = ReconstructionMeter("mask"), ReconstructionMeter("mask")
    ours.update(model.reconstruct(crops), crops)
    box.update(torch.ones_like(crops), crops)
    return {"tokens": ours.compute(), "whole_box": box.compute()}


@torch.no_grad()
def sam_instance_text(ids: np.ndarray, tokenizer: VQVAE, num_points: int = 7, seed: int = 0) -> str:
    """The ``sam_instance`` string of an id map: ``num_points`` seeded query points, each with the box and the 16
    mask tokens of the instance under it (``none`` on no instance)."""
    points = []
    h, w = ids.shape
    for y, x in query_points(ids, num_points, seed):
        by, bx = int(y * 999 / max(h - 1, 1)), int(x * 999 / max(w - 1, 1))
        if ids[y, x] == 0:
            points.append(PointInstances((by, bx), []))
            continue
        mask = ids == ids[y, x]
        tokens = tokenizer.encode(crop_mask(mask, tokenizer.config.image_size)[None])[0].flatten().tolist()
        points.append(PointInstances((by, bx), [(instance_box(mask), tokens)]))
    return sam_to_text(points)
