"""Small data for the mmseg transfer tests: a world in the ADE20K/NYUv2 layouts, a fake paper-size layout, a depth tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fourm.data import world
from fourm.data.layouts import write_layouts

WORLD_SIZE = 64


def official_fixture() -> Path:
    from fourm.models.parity import default_fixture_dir

    return default_fixture_dir() / "tiny_4m7.safetensors"


def world_layouts(root: Path, train: int = 8, val: int = 4) -> Path:
    """Render a 64 px world and write its ADE20K and NYUv2 views; returns the layouts root (the tasks' data_root)."""
    world.generate(str(root / "world"), num=train, size=WORLD_SIZE, seed=0, split="train")
    world.generate(str(root / "world"), num=val, size=WORLD_SIZE, seed=0, split="val")
    return write_layouts(root / "world", root / "layouts", which=("ade20k", "nyuv2"))


def fake_paper_layouts(root: Path, size=(96, 128), n: int = 2, num_classes: int = 150) -> Path:
    """Two random images per split in the real ADE20K and NYUv2 layouts (no meta.json, as the real datasets)."""
    rng = np.random.default_rng(0)
    h, w = size
    for split_ade, split_nyu in (("training", "train"), ("validation", "test")):
        for i in range(n):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for p in (root / "ade20k" / "images" / split_ade / f"{i}.jpg", root / "nyuv2" / "images" / split_nyu / f"{i}.jpg"):
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb).save(p)
            label = rng.integers(0, num_classes + 1, (h, w), dtype=np.uint8)
            depth = rng.integers(500, 9000, (h, w)).astype(np.uint16)
            for p, a in ((root / "ade20k" / "annotations" / split_ade / f"{i}.png", label),
                         (root / "nyuv2" / "semseg" / split_nyu / f"{i}.png", (label % 41).astype(np.uint8)),
                         (root / "nyuv2" / "annotations" / split_nyu / f"{i}.png", depth)):
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(p)
    return root


def train_depth_tokenizer(world_root: Path, out: Path, steps: int = 30) -> Path:
    """A small depth VQ-VAE (stride 16 = the 4M patch grid) fitted for a few steps on the world's depth maps."""
    from fourm.modalities.codecs import decode_depth
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    paths = sorted((world_root / "train" / "depth").glob("*.png"))
    x = torch.stack([torch.from_numpy(decode_depth(p))[None] for p in paths])
    model = VQVAE(VQVAEConfig(modality="depth", image_size=WORLD_SIZE, channels=(8, 16, 16, 32), code_dim=16,
                              codebook_size=64, depth_min=0.25, depth_max=25.0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_tokenizer(model.eval(), out)
    return out
