"""The 4M-21 tokenizers on the synthetic world, each against its trivial baseline measured in the same run.

    python -m benchmarks.tokenizers21 [--work /tmp/fourm-tok21-bench] [--train 256] [--val 64] [--size 64]
                                      [--epochs 10] [--vit vit_small_patch14_dinov2]

Renders the world, labels it with the 4M-21 labelers (Canny and SAM edges, SAM instances, a ViT's patch-14 maps and
global embeddings; the ViT has random weights unless --checkpoint names a local file), trains a tiny tokenizer per
modality on CPU and prints its validation reconstruction next to the trivial predictor:

============  ====================  =====================  ==========================
modality      tokenizer             metric                 baseline
============  ====================  =====================  ==========================
canny_edge    spatial VQ-VAE        edge F1                no edges (F1 0)
sam_edge      spatial VQ-VAE        edge F1                no edges (F1 0)
dinov2 maps   VQ-VAE, 16 x 16 grid  cosine                 the mean feature vector
dinov2 global MLP VQ-VAE, 16 tok.   cosine, c.cos          the mean embedding
                                    (c.cos: centred on the training mean, where the mean scores 0)
sam masks     mask VQ-VAE, 16 tok.  mask IoU               the whole box
============  ====================  =====================  ==========================

Minutes on one CPU thread; not part of the test suite.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fourm.data import labeling, world
from fourm.tokenizers import sam
from fourm.tokenizers.mlp_vqvae import MLPVQVAE, MLPVQVAEConfig, load_vectors, train_vectors, vector_metrics
from fourm.tokenizers.train import compose_config, train


def _label(data: Path, vit: str, checkpoint: str | None) -> None:
    for split in ("train", "val"):
        root = data / split
        for name in ("canny_edge", "sam_edge", "sam_instance"):
            labeling.label_folder(root, labeling.create_labeler(name, root / "rgb"))
        for name in ("vit_features", "vit_global"):
            opts = {"model": vit, "folder": "dinov2", **({"checkpoint": checkpoint} if checkpoint else {})}
            labeling.label_folder(root, labeling.create_labeler(name, root / "rgb", **opts))


def run(work: Path, n_train: int, n_val: int, size: int, epochs: int, vit: str, checkpoint: str | None) -> None:
    data = work / f"world{size}"
    world.generate(str(data), n_train, size, seed=0, split="train")
    world.generate(str(data), n_val, size, seed=0, split="val")
    _label(data, vit, checkpoint)
    rows = []
    tiny = ["model.channels=[16,32,64]", "model.code_dim=16", "model.codebook_size=256", "batch_size=16",
            f"epochs={epochs}", "lr=3e-3", f"out={work / 'runs'}", f"data={data}"]
    for mod in ("canny_edge", "sam_edge"):
        r = train(compose_config("train", [f"modality={mod}", f"model.image_size={size}", *tiny]), progress=True)
        rows.append((mod, "f1", r.metrics["val"]["f1"], r.metrics["baselines"]["constant"]["f1"], True))
    dim = int(load_vectors(data / "train", "dinov2_global").shape[1])
    cfg = compose_config("train", ["modality=dinov2", f"modality.feature_dim={dim}", *tiny,
                                   "model.channels=[128,128]"])
    r = train(cfg, progress=True)
    rows.append(("dinov2 maps", "cosine", r.metrics["val"]["cosine"], r.metrics["baselines"]["constant"]["cosine"], True))

    tr, va = load_vectors(data / "train", "dinov2_global"), load_vectors(data / "val", "dinov2_global")
    mlp = MLPVQVAE(MLPVQVAEConfig(dim=dim, num_tokens=16, hidden=512, code_dim=32, codebook_size=256))
    train_vectors(mlp, tr, steps=50 * epochs)
    center = tr.mean(0)
    ours = vector_metrics(mlp.decode(mlp.encode(va)), va, center)
    mean = vector_metrics(center.expand_as(va), va, center)
    rows.append(("dinov2 global", "cosine", ours["cosine"], mean["cosine"], True))
    rows.append(("dinov2 global", "c.cos", ours["centered_cosine"], mean["centered_cosine"], True))

    maps = {s: sam.load_id_maps(data / s) for s in ("train", "val")}
    tok = sam.train_mask_tokenizer(sam.instance_crops(maps["train"]), steps=50 * epochs)
    m = sam.mask_metrics(tok, sam.instance_crops(maps["val"]))
    rows.append(("sam masks", "miou", m["tokens"]["miou"], m["whole_box"]["miou"], True))

    print(f"\nworld {size}px, {n_train} train / {n_val} val images, {vit} ({'local weights' if checkpoint else 'random'})")
    print(f"{'modality':14} {'metric':7} {'tokenizer':>10} {'baseline':>10} {'difference':>11}")
    for mod, k, v, b, _ in rows:
        print(f"{mod:14} {k:7} {v:10.4f} {b:10.4f} {v - b:+11.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/fourm-tok21-bench")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--val", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--vit", default="vit_small_patch14_dinov2")
    ap.add_argument("--checkpoint", default=None, help="local ViT weights (else random)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    run(Path(a.work), a.train, a.val, a.size, a.epochs, a.vit, a.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
