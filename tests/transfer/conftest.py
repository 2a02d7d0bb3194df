"""Shared transfer fixtures: one small synthetic world in every standard layout, and the official checkpoint path.

``transfer_data_root`` is what ``data_root=`` points at: ``in1k/``, ``coco/``, ``ade20k/``, ``nyuv2/`` written by
:func:`fourm.data.layouts.write_layouts` from a world of ``WORLD_TRAIN`` + ``WORLD_VAL`` scenes at ``WORLD_SIZE`` px.
"""
from __future__ import annotations

from pathlib import Path

import pytest

WORLD_SIZE = 64
WORLD_TRAIN = 32
WORLD_VAL = 16


@pytest.fixture(scope="package")
def transfer_world(tmp_path_factory) -> Path:
    """The 4M-layout world (``<root>/{train,val}/<modality>/``)."""
    from fourm.data import world

    root = tmp_path_factory.mktemp("transfer_world")
    world.generate(str(root), num=WORLD_TRAIN, size=WORLD_SIZE, seed=0, split="train")
    world.generate(str(root), num=WORLD_VAL, size=WORLD_SIZE, seed=0, split="val")
    return root


@pytest.fixture(scope="package")
def transfer_data_root(transfer_world) -> Path:
    """``data_root`` for every transfer task: the world's IN1K / COCO / ADE20K / NYUv2 layouts."""
    from fourm.data.layouts import write_layouts

    return write_layouts(transfer_world, transfer_world / "layouts")


@pytest.fixture(scope="package")
def official_checkpoint(official_fixture_dir) -> Path:
    """The official tiny 4M-7 checkpoint (dim 8, 2 encoder blocks, 4 heads)."""
    return official_fixture_dir / "tiny_4m7.safetensors"
