"""On-disk dataset layouts: the 4M multimodal folder layout, and views of it in the standard layouts.

The 4M layout (what :func:`fourm.data.world.generate` writes and :class:`fourm.data.loading.MultimodalFolder`
reads) is one folder per modality with matching stems::

    <root>/<split>/rgb/<stem>.png          uint8 HxWx3
    <root>/<split>/depth/<stem>.png        uint16 millimetres (0 = no depth)
    <root>/<split>/normal/<stem>.png       uint8 HxWx3, (n + 1) / 2 * 255, camera frame (x right, y down, z forward)
    <root>/<split>/semseg/<stem>.png       uint8 class ids (see world.json "semseg_classes")
    <root>/<split>/instance/<stem>.png     uint16 instance ids, 0 = none; instance i <-> det[i - 1]
    <root>/<split>/det/<stem>.json         [[x0, y0, x1, y1, class_name], ...] pixel edges (x1, y1 exclusive)
    <root>/<split>/caption/<stem>.txt      one caption
    <root>/<split>/world.json              seed, size, class lists, camera convention

:func:`write_layouts` writes the same scenes as ImageNet ImageFolder, COCO, ADE20K (mmseg) and NYUv2 (mmseg) trees.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

PNG_COMPRESS_LEVEL = 1  # fast and still deterministic; these folders are caches, not archives
JPEG_QUALITY = 95


# --- atomic writes ------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes via a temp file in the same folder and os.replace: a file is either absent or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


# --- codecs of the 4M layout ----------------------------------------------------------------------------
def encode_depth(depth_m: np.ndarray) -> bytes:
    """Metres (float) -> 16-bit PNG of millimetres; depths beyond 65.535 m saturate."""
    mm = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)
    return _png_bytes(mm)


def decode_depth(path: Path) -> np.ndarray:
    return _read_png(path).astype(np.float32) / 1000.0


def encode_normal(normal: np.ndarray) -> bytes:
    """Unit vectors in [-1, 1] -> uint8 (n + 1) / 2 * 255."""
    return _png_bytes(np.clip(np.round((normal + 1.0) * 127.5), 0, 255).astype(np.uint8))


def decode_normal(path: Path) -> np.ndarray:
    """uint8 PNG -> unit vectors (renormalised: 8 bits per channel are not exactly unit length)."""
    n = _read_png(path).astype(np.float32) / 127.5 - 1.0
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def _decode_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _decode_det(path: Path) -> list:
    boxes = json.loads(Path(path).read_text())
    if not isinstance(boxes, list) or any(not isinstance(b, list) or len(b) != 5 for b in boxes):
        raise ValueError(f"{path}: det must be a JSON list of [x0, y0, x1, y1, class_name]")
    return boxes


def _decode_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class FolderModality:
    """How one modality folder of the 4M layout is stored: file extension, encoder to bytes, decoder from a path."""

    name: str
    ext: str
    kind: str  # image (interpolate bilinear) | label (nearest) | normal | boxes | text | array
    encode: Callable[[Any], bytes]
    decode: Callable[[Path], Any]

    def path(self, split_root: str | os.PathLike, stem: str) -> Path:
        return Path(split_root) / self.name / f"{stem}{self.ext}"

    def write(self, path: str | os.PathLike, value: Any) -> None:
        atomic_write_bytes(path, self.encode(value))


FOURM_MODALITIES: dict[str, FolderModality] = {
    m.name: m
    for m in [
        FolderModality("rgb", ".png", "image", _png_bytes, _decode_rgb),
        FolderModality("depth", ".png", "label", encode_depth, decode_depth),
        FolderModality("normal", ".png", "normal", encode_normal, decode_normal),
        FolderModality("semseg", ".png", "label", lambda a: _png_bytes(a.astype(np.uint8)), _read_png),
        FolderModality("instance", ".png", "label", lambda a: _png_bytes(a.astype(np.uint16)), _read_png),
        FolderModality("det", ".json", "boxes", lambda b: (json.dumps(b) + "\n").encode(), _decode_det),
        FolderModality("caption", ".txt", "text", lambda s: (s.strip() + "\n").encode(), lambda p: Path(p).read_text().strip()),
    ]
}
WORLD_MODALITIES = tuple(FOURM_MODALITIES)


def folder_modality(name: str, root: str | os.PathLike | None = None) -> FolderModality:
    """The codec of a modality folder: a built-in one, or a ``.npy`` feature folder (e.g. written by a labeler)."""
    if name in FOURM_MODALITIES:
        return FOURM_MODALITIES[name]
    if root is not None and not (Path(root) / name).is_dir():
        raise FileNotFoundError(
            f"{Path(root) / name}: no such modality folder; built-in modalities are {list(FOURM_MODALITIES)}, "
            "other folders must hold .npy arrays (e.g. written by `fourm-bench label`)"
        )
    return FolderModality(name, ".npy", "array", _encode_npy, _decode_npy)


def read_world_meta(split_root: str | os.PathLike) -> dict:
    """The world.json of a split folder (seed, size, classes, semseg_classes, camera convention)."""
    path = Path(split_root) / "world.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {split_root} is not a world split (write one with `fourm-bench world`)")
    return json.loads(path.read_text())
