"""The dataset layouts of the official 4M code, read and written, and decoding of one sample for pretraining.

A data path names one of three layouts:

* **per-modality webdataset shards** (what the official pretraining reads), one tar per modality and shard, samples
  aligned by key, the modality folders in brackets::

      /data/cc12m/[tok_rgb@224,tok_depth@224,caption,det,crop_settings]/shard-{00000..09999}.tar

  Remote shards work as in webdataset: ``pipe:<command>``, ``http(s)://`` (curl), ``gs://``; ``s3://`` is read
  through ``aws s3 cp <url> -``.
* **one tar with every modality** (``/data/tok/train-{000000..000099}.tar``): members ``<key>.<modality>.<ext>``; the
  project's own shards (a ``__shard__.json`` header first, crops in ``crops.json``) are this form too.
* **the hierarchical folder layout** (a directory): ``<root>/<modality>/<folder>/<key>.<ext>``; each ``<folder>`` is
  read like a shard. Files directly under ``<root>/<modality>/`` form one shard named ``.``.

Per modality (folder name = modality name, except ``rgb`` which serves ``rgb@<size>``):

=====================  ==========================================================================================
tokens (``tok_*``)     ``.npy`` int16 (ids >= 32768 stored as negative int16 are read back as uint16), uint16 or
                       int32, ``[n_crops, h*w]``, ``[n_crops, h, w]`` or one crop without the crop axis
``crop_settings``      ``.npy`` ``[n_crops, 5]``: top, left, height, width, flip of each crop in the original image
``rgb``                ``.jpg`` / ``.png`` (the original image: cut with the crop settings, resized) or ``.npy``
                       ``uint8 [n_crops, S, S, 3]`` (crops already cut)
``caption``            ``.txt``, or ``.json`` (a string, a list of captions of which one is picked per step, or
                       ``{"caption": ...}``)
``det``                ``.json`` ``{"image_height", "image_width", "instances": [{"boxes": [x0, y0, x1, y1],
                       "class_name", "score"}]}`` in pixels of the original image (cut with the crop settings),
                       or the project's per-crop lists of normalised boxes
4M-21 sequences        ``.json`` as the project's shards hold them (``sam_instance`` per crop, ``color_palette``
                       variants, ``metadata`` chunks); ``t5_caption`` ``.npy`` float16 ``[length, 4096]``
=====================  ==========================================================================================

A pretraining step picks one crop per sample (the same for every modality, as the official ``tok_train_aug``) and
one variant of a modality with several.
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from fourm import modalities as M
from fourm.data.official_layout import (  # noqa: F401  (the layouts' files: re-exported, one API)
    BRACKETS, CROP_SETTINGS, IMAGE_EXTS, LAYOUTS, DataError, RawSample, Source, add_member, data_path, is_remote,
    is_shard_path, open_shard, parse, read_unit, shard_complete, shard_name, write_sample_files,
)
from fourm.modalities import has_spec, spec

# --- decoding one sample -----------------------------------------------------------------------------------------
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def _npy(data: bytes) -> np.ndarray:
    """A ``.npy`` file's array. The files of one modality share one header, so each distinct header is parsed once
    (by numpy) and the array is read straight from the bytes: ``np.load`` costs ~5x more, for 7 token files a
    sample."""
    if data[:6] == b"\x93NUMPY" and len(data) >= 10:
        if data[6] == 1:
            end = 10 + int.from_bytes(data[8:10], "little")
        else:
            end = 12 + int.from_bytes(data[8:12], "little")
        header = data[:end]
        info = _NPY_HEADERS.get(header)
        if info is None:
            f = io.BytesIO(data)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)  # numpy's own header parser
            if dtype.hasobject:
                raise ValueError("a .npy of Python objects (allow_pickle is off)")
            info = (dtype, tuple(shape), fortran, f.tell())
            if len(_NPY_HEADERS) < 1024:
                _NPY_HEADERS[header] = info
        dtype, shape, fortran, offset = info
        count = int(np.prod(shape)) if shape else 1
        if len(data) - offset < count * dtype.itemsize:
            raise ValueError(f"a truncated .npy ({len(data) - offset} bytes of data for shape {shape} {dtype})")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        return arr.reshape(shape, order="F" if fortran else "C").copy(order="K")  # writable, as np.load's
    return np.load(io.BytesIO(data), allow_pickle=False)


def token_array(data: bytes, modality: str) -> np.ndarray:
    """Stored token ids -> ``int64 [n_crops, h, w]`` (``[n_crops, n]`` for tokens without a square grid)."""
    arr = _npy(data)
    if arr.dtype == np.int16:  # official int16 files: ids up to 65535 wrap to negative numbers
        arr = arr.view(np.uint16)
    arr = arr.astype(np.int64)
    side = M.get(modality).grid
    if arr.ndim == 1 or (arr.ndim == 2 and arr.shape == (side, side)):
        arr = arr[None]  # one crop stored without the crop axis
    if arr.ndim == 2:  # [n_crops, h*w]: a square grid (the registry's, or a tokenizer's own size)
        r = math.isqrt(arr.shape[1])
        if r * r != arr.shape[1]:
            raise ValueError(f"{modality} tokens of shape {arr.shape}: expected [n_crops, h*w] with a square grid")
        arr = arr.reshape(arr.shape[0], r, r)
    elif arr.ndim != 3:
        raise ValueError(f"{modality} tokens of shape {arr.shape}: expected [n_crops, {side * side}] or "
                         f"[n_crops, {side}, {side}]")
    return arr


def crop_settings(files: dict) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    """``(crops [n, 5], image size (H, W) when stored)`` of a sample; ``(None, None)`` without crop settings."""
    stored = files.get(CROP_SETTINGS)
    if stored is None:
        return None, None
    ext, data = stored
    if ext == "crops.json":
        d = json.loads(data)
        return np.asarray(d["crops"], dtype=np.int64), tuple(d["size"])
    return _npy(data).astype(np.int64).reshape(-1, 5), None


class SampleDecoder:
    """Raw files of one sample -> the values pretraining masks, one crop picked (by ``generator``) for all modalities.

    Token grids come as ``LongTensor [h, w]``, raw RGB as ``uint8 [3, S, S]``, captions as strings, det as box chunks in
    ``bins`` coordinate bins, 4M-21 sequences as stored (one crop's or one variant's), T5 embeddings as float tensors.
    A token id at or beyond ``vocab_sizes[modality]`` is an error naming the shard and key."""

    def __init__(self, modalities: list[str], vocab_sizes: dict[str, int], bins: int | None = None,
                 image_size: int | None = None, boxes: str = "chunks"):
        from fourm.data.text import COORD_BINS

        if boxes not in ("chunks", "list", "text"):
            raise ValueError(f"boxes={boxes!r}: chunks (pretraining), list ([x0, y0, x1, y1, class] per box) or text")
        self.modalities, self.vocab, self.bins = list(modalities), dict(vocab_sizes), bins or COORD_BINS
        self.boxes_as = boxes
        self.image_size = image_size  # raw RGB cut from an image file is resized to this (default: its name's size)
        self.kinds = {m: M.get(m).kind for m in self.modalities}

    def __call__(self, raw: RawSample, generator: torch.Generator, crop: int | None = None) -> dict:
        missing = [m for m in self.modalities if raw.files.get(m) is None]
        if missing:
            raise DataError(f"{raw.where}: sample {raw.key!r} has no {missing[0]!r}; add it, drop the modality from "
                            "model.domains_in/out, or pass data.bad_samples=skip")
        try:
            return self._decode(raw, generator, crop)
        except DataError:
            raise
        except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{raw.where}: sample {raw.key!r}: cannot decode ({type(e).__name__}: {e}); rewrite the "
                            "shard, or pass data.bad_samples=skip") from None

    def _decode(self, raw: RawSample, g: torch.Generator, crop: int | None = None) -> dict:
        from fourm.data.text import boxes_to_chunks

        crops, size = crop_settings(raw.files)
        tokens = {}
        for m in self.modalities:
            if self.kinds[m] == "image_tokens":
                arr = token_array(raw.files[m][1], m)
                top = int(arr.max(initial=0))
                if m in self.vocab and top >= self.vocab[m]:
                    raise DataError(f"{raw.where}: sample {raw.key!r}: {m} token id {top} >= its vocabulary "
                                    f"{self.vocab[m]}; the shard was written with another tokenizer (set "
                                    "model.vocab_sizes to it), or pass data.bad_samples=skip")
                tokens[m] = arr
        counts = {len(a) for a in tokens.values()}
        if crops is not None:
            counts.add(len(crops))
        if len(counts) > 1:
            raise DataError(f"{raw.where}: sample {raw.key!r}: modalities store different numbers of crops "
                            f"({ {m: len(a) for m, a in tokens.items()} }, crop settings {None if crops is None else len(crops)})")
        n = counts.pop() if counts else 1
        if crop is not None and not 0 <= crop < n:
            raise DataError(f"{raw.where}: crop={crop}, but sample {raw.key!r} stores {n} crops")
        c = crop if crop is not None else int(torch.randint(0, n, (1,), generator=g)) if n > 1 else 0
        out = {"__key__": raw.key, "__crop__": c}
        if crops is not None:
            out["__box__"] = [int(v) for v in crops[c]]
        for m in self.modalities:
            kind, (ext, data) = self.kinds[m], raw.files[m]
            if kind == "image_tokens":
                out[m] = torch.from_numpy(tokens[m][c])
            elif kind == "image":
                out[m] = self._pixels(m, ext, data, crops, c, raw)
            elif kind == "embedding_sequence":
                out[m] = torch.from_numpy(_npy(data).astype(np.float32))
            else:
                value = data.decode().strip() if ext.endswith("txt") else json.loads(data)
                s = spec(m) if has_spec(m) else None
                if s is not None and s.value == "boxes":
                    boxes = self._boxes(value, crops, size, c, raw)
                    if self.boxes_as == "chunks":
                        out[m] = boxes_to_chunks(boxes, 1, self.bins)
                    elif self.boxes_as == "text":
                        from fourm.data.text import boxes_to_text

                        out[m] = boxes_to_text(boxes, 1)
                    else:
                        out[m] = boxes
                elif s is not None and s.value == "text":
                    out[m] = _caption(value, g)
                else:
                    per = (s.shard_member[1] if s is not None and s.shard_member else "whole")
                    if per == "crops":
                        out[m] = value[c]
                    elif per == "variants":
                        out[m] = value[int(torch.randint(0, len(value), (1,), generator=g))]
                    else:
                        out[m] = value
        return out

    def _pixels(self, m, ext, data, crops, c, raw) -> torch.Tensor:
        if ext.endswith("npy"):
            arr = _npy(data)
            arr = arr[c] if arr.ndim == 4 else arr
            return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        from PIL import Image

        from fourm.tokenizers.modality_io import center_box, crop_resize_flip

        size = self.image_size or int(m.partition("@")[2] or 224)
        with Image.open(io.BytesIO(data)) as im:
            img = np.asarray(im.convert("RGB"))
        if crops is None:
            box, flip = center_box(*img.shape[:2]), False
        else:
            box, flip = tuple(int(v) for v in crops[c][:4]), bool(crops[c][4])
        # the crop cut from the uint8 image first: only its pixels become floats (crop_resize_flip cuts the same box)
        top, left, h, w = box
        x = torch.from_numpy(np.array(img[top:top + h, left:left + w])).permute(2, 0, 1).float().div_(255.0)
        y = crop_resize_flip("rgb", x, (0, 0, x.shape[1], x.shape[2]), size, flip)
        return y.mul_(255).round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def _boxes(value, crops, size, c, raw) -> list:
        if isinstance(value, list):  # the project's shards: normalised boxes per crop
            return value[c]
        from fourm.tokenizers.modality_io import center_box, crop_boxes

        h, w = int(value.get("image_height", 0)), int(value.get("image_width", 0))
        if crops is None and not (h and w):
            raise ValueError("an official det file without image_height/image_width and no crop settings")
        boxes = [[*inst["boxes"][:4], inst.get("class_name", inst.get("class_id"))] for inst in value.get("instances", [])]
        box, flip = (center_box(h, w), False) if crops is None else (tuple(int(v) for v in crops[c][:4]), bool(crops[c][4]))
        return crop_boxes(boxes, box, flip)


def _caption(value, g: torch.Generator) -> str:
    if isinstance(value, dict):
        value = value.get("caption", value.get("text"))
    if isinstance(value, list):
        value = value[int(torch.randint(0, len(value), (1,), generator=g))] if value else ""
    if not isinstance(value, str):
        raise ValueError(f"a caption must be text, a list of texts or {{'caption': text}}, got {type(value).__name__}")
    return value.strip()


# --- writing -----------------------------------------------------------------------------------------------------
def official_tokens(arr: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids ``[n_crops, h, w]`` as the official files hold them: ``[n_crops, h*w]``, int16 (ids up to 65535,
    the upper half stored as negative numbers, as a uint16 viewed as int16) or int32 beyond."""
    flat = np.asarray(arr).reshape(len(arr), -1)
    if vocab_size <= 2**16:
        return flat.astype(np.uint16).view(np.int16)
    return flat.astype(np.int32)


def det_json(boxes: list, height: int, width: int) -> dict:
    """Boxes ``[x0, y0, x1, y1, class]`` in pixels -> the official detection JSON of one image."""
    return {"num_instances": len(boxes), "image_height": int(height), "image_width": int(width),
            "instances": [{"boxes": [float(v) for v in b[:4]], "score": 1.0, "class_name": str(b[4])} for b in boxes]}


def index_of(path: str) -> dict | None:
    """The encode index beside a data path written by ``fourm-bench tokenize encode`` (``<root>.json``), if any."""
    src_root = None
    m = BRACKETS.match(str(path))
    if m:
        src_root = m["prefix"].rstrip("/")
    elif os.path.isdir(path):
        src_root = str(path).rstrip("/")
    if src_root and not is_remote(src_root) and os.path.isfile(src_root + ".json"):
        return json.loads(Path(src_root + ".json").read_text())
    return None
