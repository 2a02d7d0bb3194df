"""A tiny rendered world (32 px) shared by the tokenizer tests, and tiny tokenizer configs."""
from __future__ import annotations

import pytest
import torch

from fourm.data import world
from fourm.tokenizers.vqvae import VQVAEConfig

# 32 px -> 8x8 tokens; small enough for fast CPU tests
TINY_MODEL = ["model.image_size=32", "model.channels=[8,16]", "model.code_dim=8", "model.codebook_size=64",
              "model.restart_after=5"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Runs after tests/conftest.py's 2-thread pin: on a shared, oversubscribed 2-core box two OpenMP threads
    # spin-wait and make these small convs ~20x slower than one thread.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="package")
def tiny_world(tmp_path_factory):
    """A 4M-layout world: 24 train + 8 val scenes at 32 px."""
    root = tmp_path_factory.mktemp("tok_world")
    world.generate(str(root), 24, 32, seed=0, split="train")
    world.generate(str(root), 8, 32, seed=0, split="val")
    return root


def _tiny_config(modality: str, **kw) -> VQVAEConfig:
    base = dict(modality=modality, token_modality=f"tok_{modality}@224", image_size=32, channels=(8, 16), code_dim=8,
                codebook_size=64, restart_after=5, num_classes=15 if modality == "semseg" else 0,
                ignore_index=0 if modality == "semseg" else 255)
    base.update(kw)
    return VQVAEConfig(**base)


@pytest.fixture
def tiny_config():
    """``tiny_config(modality, **overrides) -> VQVAEConfig`` at 32 px, 8x8 tokens, 64 codes."""
    return _tiny_config


@pytest.fixture
def tiny_train_overrides(tiny_world, tmp_path):
    """Hydra overrides of a seconds-long tokenizer training run on the tiny world (3 steps per epoch)."""
    return [f"data={tiny_world}", f"out={tmp_path / 'runs'}", *TINY_MODEL, "batch_size=8", "epochs=2",
            "warmup_steps=2", "log_every=1"]
