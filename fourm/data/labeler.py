"""The labeler registry: what a pseudo-labeler is, and the table of labelers by name.

The labelers themselves register here from :mod:`fourm.data.labeling` (world ground truth, timm features) and
:mod:`fourm.data.labelers21` (the 4M-21 modalities); ``fourm-bench label`` runs them.
"""
from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fourm.modalities import ModalitySpec


class Labeler(abc.ABC):
    """A pseudo-labeler: ``__call__(images Bx3xHxW float [0, 1], stems) -> list of B labels``, saved by ``save``.

    ``modality`` is the output folder name; ``codec`` says how a label is stored (extension, encoder).
    """

    name: str = "labeler"
    modality: str = "labels"
    codec: ModalitySpec

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, stems: Sequence[str]) -> list:
        """Labels for a batch of RGB images (float, [B, 3, H, W]) with their stems."""

    def output_path(self, out_dir: str | os.PathLike, stem: str) -> Path:
        return Path(out_dir) / f"{stem}{self.codec.ext}"

    def encode(self, label: Any) -> bytes:
        """A label as its file's bytes (a folder's file, or a shard member)."""
        return self.codec.encode(label)

    def save(self, path: str | os.PathLike, label: Any) -> None:
        """Atomic: a crash never leaves a half-written label that a resumed run would skip."""
        from fourm.modalities import codecs

        codecs.atomic_write_bytes(path, self.encode(label))


LABELERS: dict[str, Callable[..., Labeler]] = {}


def register_labeler(name: str):
    """Decorator: register a factory ``f(in_dir: Path, **options) -> Labeler`` under ``name``."""

    def deco(factory):
        if name in LABELERS:
            raise ValueError(f"labeler {name!r} is already registered")
        LABELERS[name] = factory
        return factory

    return deco


def create_labeler(name: str, in_dir: str | os.PathLike, **options) -> Labeler:
    if name not in LABELERS:
        raise KeyError(f"unknown labeler {name!r}; registered: {sorted(LABELERS)}")
    return LABELERS[name](Path(in_dir), **options)
