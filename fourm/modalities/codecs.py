"""How a modality file of the 4M folder layout is stored: extension, bytes out, value in.

One :class:`Codec` per storage form; :mod:`fourm.modalities.specs` gives each modality its codec. The forms:

    png_rgb     uint8 HxWx3 PNG
    png_depth   uint16 PNG of millimetres (0 = no depth), decoded to float metres
    png_normal  uint8 HxWx3 PNG of (n + 1) / 2 * 255 (camera frame), decoded to unit vectors
    png_u8      uint8 PNG of ids or a {0, 255} map (semseg, edges)
    png_u16     uint16 PNG of ids (instances)
    boxes       JSON list of [x0, y0, x1, y1, class_name] in pixels (the official detection JSON is read too)
    text        one line of text
    json        any JSON value (palettes, metadata)
    npy         a numpy array (feature maps, embeddings)
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from fourm import files

PNG_COMPRESS_LEVEL = 1  # fast and still deterministic; these folders are caches, not archives


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Dataset files are regenerable caches: atomic, but without the cost of an fsync per file."""
    files.atomic_write_bytes(path, data, fsync=False)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def read_png(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def encode_depth(depth_m: np.ndarray) -> bytes:
    """Metres (float) -> 16-bit PNG of millimetres; depths beyond 65.535 m saturate."""
    mm = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)
    return png_bytes(mm)


def decode_depth(path: str | os.PathLike) -> np.ndarray:
    return read_png(path).astype(np.float32) / 1000.0


def encode_normal(normal: np.ndarray) -> bytes:
    """Unit vectors in [-1, 1] -> uint8 (n + 1) / 2 * 255."""
    return png_bytes(np.clip(np.round((normal + 1.0) * 127.5), 0, 255).astype(np.uint8))


def decode_normal(path: str | os.PathLike) -> np.ndarray:
    """uint8 PNG -> unit vectors (renormalised: 8 bits per channel are not exactly unit length)."""
    n = read_png(path).astype(np.float32) / 127.5 - 1.0
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def decode_boxes(path: str | os.PathLike) -> list:
    """This project's box list, or the official detection JSON (``{"instances": [{"boxes", "class_name", "score"}]}``,
    what the ViTDet labeller writes) as that list."""
    boxes = json.loads(Path(path).read_text())
    if isinstance(boxes, dict) and isinstance(boxes.get("instances"), list):
        boxes = [[*inst["boxes"][:4], inst.get("class_name", inst.get("class_id"))] for inst in boxes["instances"]]
    if not isinstance(boxes, list) or any(not isinstance(b, list) or len(b) != 5 for b in boxes):
        raise ValueError(f"{path}: boxes must be a JSON list of [x0, y0, x1, y1, class_name] or the official "
                         f'detection JSON {{"instances": [{{"boxes": [x0, y0, x1, y1], "class_name", "score"}}]}}')
    return boxes


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _encode_json(value: Any) -> bytes:
    return (json.dumps(value) + "\n").encode()


@dataclasses.dataclass(frozen=True)
class Codec:
    """A storage form: file extension, encoder to bytes, decoder from a path."""

    name: str
    ext: str
    encode: Callable[[Any], bytes]
    decode: Callable[[Path], Any]


CODECS: dict[str, Codec] = {
    c.name: c
    for c in [
        Codec("png_rgb", ".png", png_bytes, decode_rgb),
        Codec("png_depth", ".png", encode_depth, decode_depth),
        Codec("png_normal", ".png", encode_normal, decode_normal),
        Codec("png_u8", ".png", lambda a: png_bytes(np.asarray(a).astype(np.uint8)), read_png),
        Codec("png_u16", ".png", lambda a: png_bytes(np.asarray(a).astype(np.uint16)), read_png),
        Codec("boxes", ".json", _encode_json, decode_boxes),
        Codec("text", ".txt", lambda s: (s.strip() + "\n").encode(), lambda p: Path(p).read_text().strip()),
        Codec("json", ".json", _encode_json, lambda p: json.loads(Path(p).read_text())),
        Codec("npy", ".npy", encode_npy, decode_npy),
    ]
}
