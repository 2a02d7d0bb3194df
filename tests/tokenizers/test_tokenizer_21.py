"""Spatial VQ-VAEs of the 4M-21 modalities, trained on labels the 4M-21 labelers wrote on the tiny world: Canny
edges, SAM edges and DINOv2-style feature maps, each measured against its trivial baseline."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.data import labeling
from fourm.tokenizers.checkpoint import load_tokenizer
from fourm.tokenizers.train import compose_config, train
from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig


@pytest.fixture(scope="module")
def labelled(tiny_world, tmp_path_factory):
    """The tiny world with canny_edge, sam_edge and feature maps (32 x 16 x 16 per image) labelled."""
    root = tmp_path_factory.mktemp("labelled")
    for split in ("train", "val"):
        shutil.copytree(tiny_world / split, root / split)
        for name in ("canny_edge", "sam_edge"):
            labeling.label_folder(root / split, labeling.create_labeler(name, root / split / "rgb"))
        # feature maps that follow the image content, as a ViT's do: a fixed random 1x1 layer over the 16 x 16 RGB
        w = torch.from_numpy(np.random.default_rng(0).normal(size=(32, 3))).float()
        (root / split / "feat_vit").mkdir()
        for p in sorted((root / split / "rgb").iterdir()):
            rgb = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
            rgb = torch.nn.functional.interpolate(rgb[None], size=(16, 16), mode="area")[0]
            f = torch.tanh(torch.einsum("ck,khw->chw", w, rgb * 2 - 1))
            np.save(root / split / "feat_vit" / f"{p.stem}.npy", f.numpy().astype(np.float16))
    return root


TINY = ["model.channels=[16,32]", "model.code_dim=8", "model.codebook_size=64", "model.restart_after=5",
        "batch_size=8", "warmup_steps=2", "log_every=1", "threads=1"]


@pytest.mark.parametrize("modality", ["canny_edge", "sam_edge"])
def test_edge_tokenizer_beats_no_edges(labelled, tmp_path, modality):
    cfg = compose_config("train", [f"modality={modality}", f"data={labelled}", f"out={tmp_path}", *TINY,
                                   "model.image_size=32", "epochs=15", "lr=3e-3"])
    run = train(cfg, progress=False)
    m = run.metrics
    print(modality, m["val"], m["baselines"])
    assert m["grid"] == 8 and set(m["val"]) >= {"f1", "precision", "recall", "pixel_acc"}
    assert m["baselines"]["constant"]["f1"] == 0.0  # "no edges" finds none
    assert m["val"]["f1"] > 0.3 and m["val"]["recall"] > 0.5  # measured: canny 0.44 (recall 0.97), sam edges higher
    model = load_tokenizer(run.path)
    assert model.config.modality == modality and model.config.token_modality == f"tok_{modality}@224"


def test_feature_map_tokenizer_keeps_the_grid_and_beats_the_mean_vector(labelled, tmp_path):
    cfg = compose_config("train", ["modality=dinov2", "modality.feature_dim=32", f"data={labelled}", f"out={tmp_path}",
                                   *TINY, "epochs=15", "lr=3e-3"])
    cfg["modality"]["name"] = "feat_vit"  # the folder the maps are in (feat_*: feature maps)
    run = train(cfg, progress=False)
    m = run.metrics
    print(m["val"], m["baselines"])
    assert m["grid"] == 16  # one token per map cell: the 16 x 16 grid of tok_dinov2@224
    assert m["val"]["cosine"] > m["baselines"]["constant"]["cosine"] + 0.2
    assert m["val"]["mse"] < m["baselines"]["constant"]["mse"]


def test_unknown_modalities_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"no tokenizer for modality 'clip_global'.*feature_dim=<channels>"):
        VQVAEConfig(modality="clip_global")
    cfg = VQVAEConfig(modality="dinov2", token_modality="tok_dinov2@224", feature_dim=8, image_size=16,
                      channels=(8, 8), code_dim=4, codebook_size=16, downsample_stages=0)
    model = VQVAE(cfg)
    assert model.encode(torch.randn(2, 8, 16, 16)).shape == (2, 16, 16)
    assert model.decode(torch.zeros(2, 16, 16, dtype=torch.long)).shape == (2, 8, 16, 16)
