"""Decode shard tokens back to images and write an original-vs-reconstruction PNG grid for people to look at.

``fourm-bench tokenize decode shards=<out>/val data=<dataset> out=grid.png num=8`` (any data path): one row per
sample (crop 0, the full image), per token modality two columns: the original from ``data`` (resized like the
encoder saw it) and the decoded tokens. Tokenizers default to the paths recorded in the encode index (or the shard header).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from fourm.modalities import spec
from fourm.tokenizers.checkpoint import atomic_write_bytes, load_tokenizer
from fourm.tokenizers.modality_io import center_box, crop_resize_flip, read_raw, split_root, to_tensor
from fourm.tokenizers.shards import TokenShardDataset, read_header


def grid_image(rows: list[list[np.ndarray]], labels: list[str], tile: int = 128) -> Image.Image:
    """Tiles (uint8 HxWx3, nearest-upscaled to ``tile``) in rows, with a label strip on top."""
    pad, head = 2, 14
    ncols = len(labels)
    img = Image.new("RGB", (ncols * (tile + pad) + pad, head + len(rows) * (tile + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for c, label in enumerate(labels):
        draw.text((pad + c * (tile + pad) + 2, 1), label, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, a in enumerate(row):
            if a is None:
                continue
            im = Image.fromarray(a).resize((tile, tile), Image.NEAREST)
            img.paste(im, (pad + c * (tile + pad), head + pad + r * (tile + pad)))
    return img


@torch.no_grad()
def decode_grid(cfg: dict) -> Path:
    """Write the grid PNG (atomically) and return its path."""
    ds = TokenShardDataset(cfg["shards"], crop=0, shuffle=False)
    header = ds.index if ds.index is not None else read_header(ds.shards[0])
    if header is None:
        raise ValueError(f"shards={cfg['shards']}: no encode index beside the data ({{root}}.json) names their "
                         "tokenizers; decode data written by `fourm-bench tokenize encode`")
    header = {**header, "split": header.get("split") or (header.get("config") or {}).get("split")}
    token_mods = header["modalities"]
    given = {k: v for k, v in (cfg.get("tokenizers") or {}).items() if v is not None}
    models = {}
    for name, info in token_mods.items():
        path = given.get(info["source"], info["tokenizer"])
        models[name] = load_tokenizer(path)
    root = split_root(cfg["data"], cfg.get("split") or header.get("split")) if cfg.get("data") else None

    labels, rows = [], []
    for name in token_mods:
        src = token_mods[name]["source"]
        labels += [src, f"{src} decoded"]  # short: must fit a tile
    for i, sample in enumerate(ds):
        if i >= cfg["num"]:
            break
        row = []
        for name, model in models.items():
            c = model.config
            kw = {"num_classes": max(c.num_classes, 1)}
            original = None
            if root is not None:
                x = to_tensor(c.modality, read_raw(root, c.modality, sample["__key__"]))
                x = crop_resize_flip(c.modality, x, center_box(*x.shape[-2:]), c.image_size, False)
                original = spec(c.modality).picture(x, **kw)
            recon = model.decode(sample[name][None])[0]
            row += [original, spec(c.modality).picture(recon, **kw)]
        rows.append(row)
    if not rows:
        raise ValueError(f"shards {cfg['shards']!r} hold no samples")
    out = Path(cfg["out"])
    buf = io.BytesIO()
    grid_image(rows, labels, cfg.get("tile", 128)).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out


def cli(argv: list[str]) -> int:
    """``fourm-bench tokenize decode key=value ...`` (hydra overrides of configs/decode.yaml)."""
    from fourm.tokenizers.train import CONFIG_DIR, compose_config

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print((CONFIG_DIR / "decode.yaml").read_text())
        return 0
    cfg = compose_config("decode", [a for a in argv if a != "--print-config"])
    if "--print-config" in argv:
        print(OmegaConf.to_yaml(cfg))
        return 0
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    print(f"wrote {decode_grid(cfg)}")
    return 0
