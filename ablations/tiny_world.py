"""Data for the ``tiny`` grid: a small synthetic world, its IN1K layout, and token shards from seeded VQ-VAEs.

    python -m ablations.tiny_world OUT      # prints the --set params of `fourm-bench sweep tiny`

The tokenizers are freshly initialised (seeded) VQ-VAEs at 56 px with two 2x stages, so every image modality becomes
a 14x14 token grid, the grid the 4M-7 modalities expect; enough to exercise the whole pipeline in seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

SIZE = 56
TOKEN_MODALITIES = ("rgb", "depth", "normal", "semseg")
CLASS_SETTINGS = {"semseg": {"num_classes": 15, "ignore_index": 0}}  # the world's classes, 0 = void
TEXT_TOKENIZER_NAME = "text_tokenizer_4m_wordpiece_30k.json"  # in the official fixture folder


def build(out: str | Path, num_train: int = 16, num_val: int = 4, text_tokenizer: str | Path | None = None) -> dict:
    """Make (or reuse) the data under ``out``; returns the tiny grid's params (shard patterns, tokenizer, data_root)."""
    import torch

    from fourm.data import world
    from fourm.data.layouts import write_layouts
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.encode import encode_dataset
    from fourm.tokenizers.train import compose_config
    from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig

    out = Path(out).expanduser().resolve()
    from fourm.models.parity import default_fixture_dir

    text_tokenizer = Path(text_tokenizer or default_fixture_dir() / TEXT_TOKENIZER_NAME)
    if not text_tokenizer.exists():
        raise FileNotFoundError(f"text tokenizer {text_tokenizer} not found; pass text_tokenizer=<4M WordPiece JSON>")
    world.generate(str(out / "world"), num_train, SIZE, seed=0, split="train")
    world.generate(str(out / "world"), num_val, SIZE, seed=0, split="val")
    layouts = write_layouts(out / "world", out / "layouts", which=("in1k",))
    paths = {}
    for i, mod in enumerate(TOKEN_MODALITIES):
        paths[mod] = out / "tokenizers" / f"{mod}.safetensors"
        if not paths[mod].exists():
            torch.manual_seed(i)
            cfg = VQVAEConfig(modality=mod, token_modality=f"tok_{mod}@224", image_size=SIZE, channels=(8, 16),
                              code_dim=8, codebook_size=64, **CLASS_SETTINGS.get(mod, {}))
            paths[mod].parent.mkdir(parents=True, exist_ok=True)
            save_tokenizer(VQVAE(cfg).eval(), paths[mod])
    patterns = {}
    for split in ("train", "val"):
        index_file = out / "tokens" / f"{split}.json"
        if index_file.exists():
            import json

            patterns[split] = json.loads(index_file.read_text())["pattern"]
            continue
        cfg = compose_config("encode", [f"data={out / 'world'}", f"split={split}", f"out={out / 'tokens'}",
                                        *[f"tokenizers.{m}={p}" for m, p in paths.items()]])
        patterns[split] = encode_dataset(cfg, progress=False)["pattern"]
    return {"train_shards": patterns["train"], "val_shards": patterns["val"],
            "text_tokenizer": str(text_tokenizer), "data_root": str(layouts)}


def set_args(params: dict) -> list[str]:
    """The params as ``--set params.NAME=VALUE`` arguments of `fourm-bench sweep tiny`."""
    return [a for k, v in params.items() for a in ("--set", f"params.{k}={v}")]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ablations.tiny_world OUT")
    print(" ".join(set_args(build(sys.argv[1]))))
