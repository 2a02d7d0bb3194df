"""Token shards: webdataset-style tar files of pretokenized samples, and the reader pretraining uses.

A shard ``<split>-000000.tar`` holds, in order:

* ``__shard__.json`` — header: ``format``, ``samples`` (count), ``crops`` (per sample), ``encode_id`` (hash of the
  encode config), and ``modalities``: ``{name: {"vocab_size", "grid", "source", "tokenizer"}}`` for token modalities.
* per sample, members named ``<key>.<modality>.<ext>`` (key = the dataset stem, no dots):

  ==========================  ====================================================================================
  ``<key>.tok_depth@224.npy`` token ids, uint16 (int32 if vocab > 65536) ``[crops, h, w]``; every id < vocab_size
  ``<key>.rgb@224.npy``        optional pixels of the same crops, uint8 ``[crops, S, S, 3]``
  ``<key>.caption.txt``        the caption (same for every crop)
  ``<key>.det.json``           per crop, the boxes ``[x0, y0, x1, y1, class]`` inside that crop, normalised to [0, 1]
  ``<key>.color_palette.json`` 4M-21: the palette strings of 1..k colours (pretraining picks one per step)
  ``<key>.metadata.json``      4M-21: the metadata chunks ``v1=<type> v0=<bin>`` (same for every crop)
  ``<key>.sam_instance.json``  4M-21: per crop, the SAM-instance string of that crop
  ``<key>.t5_caption.npy``     4M-21: the caption's T5 embeddings, float16 ``[length, 4096]`` (same for every crop)
  ``<key>.crops.json``         ``{"size": [H, W], "crops": [[top, left, h, w, flip], ...]}`` in original pixels
  ==========================  ====================================================================================

Global tokens (``tok_dinov2_global``) are stored like grids (``[crops, 4, 4]``), the same for every crop.

Crop 0 is always the full image (centre square, no flip); crops 1.. are random resized crops (token augmentation as
in 4M). Every modality of a sample uses the same crop list, so the crops are aligned across modalities.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from fourm.modalities import has_spec, sequence_members, spec
from fourm.tokenizers.layout import add_member

FORMAT = "fourm-token-shard/1"
PIXELS = "rgb"  # members named rgb@<size>.npy hold the crops' pixels (uint8 [n, H, W, 3]), stored beside the tokens
CROPS = "crops"  # the member crops.json: each crop's box and flip
HEADER = "__shard__.json"


# The sequence modalities of a shard: their member, and whether it holds one value per crop ("crops"), variants of
# which pretraining picks one per step ("variants"), or one value for the sample ("whole").
# Each spec with a ``shard_member`` says it (fourm.modalities.specs).
SEQUENCE_FILES = sequence_members()


class ShardError(RuntimeError):
    """A token shard that cannot be read as written (truncated, corrupt, or inconsistent with its header)."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- writing -------------------------------------------------------------------------------------------
def write_shard(path: str | os.PathLike, header: dict, samples: list[dict[str, bytes | str | object]]) -> int:
    """Write one shard atomically (temp file + os.replace); ``samples`` are ``{"__key__": key, ext: payload}``.

    Payloads: ``bytes`` as is, ``str`` as UTF-8, numpy arrays as .npy, anything else as JSON. Returns the file size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, **header, "samples": len(samples)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            add_member(tar, HEADER, _json_bytes(header))
            for s in samples:
                key = s["__key__"]
                if "." in key or "/" in key:
                    raise ValueError(f"sample key {key!r} contains '.' or '/'; webdataset keys must not")
                for ext, payload in s.items():
                    if ext == "__key__":
                        continue
                    if isinstance(payload, np.ndarray):
                        payload = npy_bytes(payload)
                    elif isinstance(payload, str):
                        payload = payload.encode()
                    elif not isinstance(payload, bytes):
                        payload = _json_bytes(payload)
                    add_member(tar, f"{key}.{ext}", payload)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def read_header(path: str | os.PathLike) -> dict:
    """The ``__shard__.json`` of a shard (first member); a shard without one is a :class:`ShardError`."""
    try:
        with tarfile.open(path, "r|") as tar:
            first = tar.next()
            if first is None or first.name != HEADER:
                raise ShardError(f"{path}: first member is {getattr(first, 'name', None)!r}, not {HEADER}; not a token shard")
            return json.loads(tar.extractfile(first).read())
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as e:
        raise ShardError(_corrupt(path, e)) from None


def _corrupt(path, err) -> str:
    return (
        f"token shard {path} is truncated or corrupt ({type(err).__name__}: {err}); "
        "delete it and re-run `fourm-bench tokenize encode` to rewrite it"
    )


# --- reading -------------------------------------------------------------------------------------------
def expand_shards(pattern: str | list[str]) -> list[str]:
    """Shard paths of a braceexpand pattern (or a list of patterns); missing files are one error listing them."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    paths = [p for pat in patterns for p in braceexpand(str(pat))]
    if not paths:
        raise FileNotFoundError(f"shard pattern {pattern!r} expands to no files")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"token shards not found: {missing[:3]}{more}; check the pattern {pattern!r}")
    return paths


def iter_shard(path: str | os.PathLike) -> Iterator[tuple[dict, dict[str, bytes]]]:
    """Raw samples of one shard as ``(header, {"__key__": key, ext: bytes})``; checks the sample count at the end."""
    n = 0
    header = None
    try:
        with tarfile.open(path, "r|") as tar:
            key, sample = None, {}
            for member in tar:
                data = tar.extractfile(member).read() if member.isfile() else b""
                if header is None:
                    if member.name != HEADER:
                        raise ShardError(f"{path}: first member is {member.name!r}, not {HEADER}; not a token shard")
                    header = json.loads(data)
                    continue
                k, _, ext = os.path.basename(member.name).partition(".")
                if k != key and key is not None:
                    yield header, {"__key__": key, **sample}
                    n += 1
                    sample = {}
                key = k
                sample[ext] = data
            if key is not None:
                yield header, {"__key__": key, **sample}
                n += 1
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as e:
        raise ShardError(_corrupt(path, e)) from None
    if header is None:
        raise ShardError(_corrupt(path, "empty archive"))
    if n != header["samples"]:
        raise ShardError(_corrupt(path, f"header promises {header['samples']} samples, read {n}"))


class TokenShardDataset(IterableDataset):
    """Iterate token shards as dicts ``modality -> value``, one random stored crop per sample.

    Yields: each token modality -> ``LongTensor [h, w]``; ``rgb@224`` -> ``uint8 [3, S, S]`` (if stored and asked
    for); ``caption`` -> str; ``det`` -> list of ``[x0, y0, x1, y1, class]`` normalised to the crop (or the official
    det text with ``det_format="text"``); plus ``__key__`` and ``__crop__``.

    ``modalities=None`` takes every modality of the shards. Shards are split across DataLoader workers and
    ``torch.distributed`` ranks; ``shuffle`` permutes the shard order, ``shuffle_buffer > 1`` also mixes samples
    through a buffer of that many; call :meth:`set_epoch` to reshuffle shards, buffer and crops each epoch.
    A truncated or corrupt shard, or a token id outside its vocabulary, raises one :class:`ShardError` naming the file.
    """

    def __init__(
        self,
        pattern: str | list[str],
        modalities: list[str] | None = None,
        *,
        crop: str | int = "random",
        shuffle: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        det_format: str = "list",
        check_vocab: bool = True,
    ):
        super().__init__()
        from fourm.tokenizers import layout

        self.src = layout.parse(pattern)  # the official layouts too (fourm/tokenizers/layout.py)
        self.shards = expand_shards(pattern) if self.src.layout == "tar" else list(self.src.units)
        self.index = layout.index_of(pattern) if self.src.layout != "tar" else None
        self.modalities = list(modalities) if modalities is not None else None
        if not (crop == "random" or isinstance(crop, int)):
            raise ValueError(f"crop must be 'random' or a crop index, got {crop!r}")
        if det_format not in ("list", "text"):
            raise ValueError(f"det_format must be 'list' or 'text', got {det_format!r}")
        self.crop, self.shuffle, self.shuffle_buffer, self.seed = crop, shuffle, shuffle_buffer, seed
        self.det_format, self.check_vocab = det_format, check_vocab
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def headers(self) -> list[dict]:
        return [read_header(p) for p in self.shards]

    def num_samples(self) -> int:
        return sum(h["samples"] for h in self.headers())

    def _my_shards(self) -> tuple[list[str], int]:
        shards = list(self.shards)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = rank * nw + wid, world * nw
        return shards[slot::slots], slot

    def _samples(self, shards: list[str], gen: torch.Generator):
        if self.src.layout == "tar":
            for path in shards:
                for header, raw in iter_shard(path):
                    yield self._decode(path, header, raw, gen)
            return
        from fourm.tokenizers import layout

        mods = self.modalities or [("rgb@224" if f == "rgb" else f) for f in self.src.folders if f != layout.CROP_SETTINGS]
        vocab = {m: v["vocab_size"] for m, v in (self.index or {}).get("modalities", {}).items()} if self.check_vocab else {}
        decode = layout.SampleDecoder(mods, vocab, boxes="text" if self.det_format == "text" else "list")
        for unit in shards:
            for raw in layout.read_unit(self.src, unit, mods):
                item = decode(raw, gen, None if self.crop == "random" else self.crop)
                item.pop("__box__", None)
                yield item

    def __iter__(self):
        shards, slot = self._my_shards()
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 4099 + slot)
        buf: list[dict] = []
        for item in self._samples(shards, gen):
            if self.shuffle_buffer <= 1:
                yield item
                continue
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                yield self._pop_random(buf, gen)
        while buf:
            yield self._pop_random(buf, gen)

    @staticmethod
    def _pop_random(buf: list, gen: torch.Generator):
        j = int(torch.randint(0, len(buf), (1,), generator=gen))
        buf[j], buf[-1] = buf[-1], buf[j]
        return buf.pop()

    def _decode(self, path, header: dict, raw: dict, gen: torch.Generator) -> dict:
        token_mods = header["modalities"]
        wanted = self.modalities if self.modalities is not None else [*token_mods, *_extras(raw)]
        n_crops = header["crops"]
        if self.crop == "random":
            c = int(torch.randint(0, n_crops, (1,), generator=gen))
        else:
            if not 0 <= self.crop < n_crops:
                raise ValueError(f"crop={self.crop} but {path} stores {n_crops} crops per sample")
            c = self.crop
        out = {"__key__": raw["__key__"], "__crop__": c}
        for m in wanted:
            ext = _ext(m, token_mods)
            if ext not in raw:
                raise ShardError(f"{path}: sample {raw['__key__']!r} has no {m!r} ({ext}); it holds {sorted(raw)}")
            try:
                out[m] = self._value(m, raw[ext], c, token_mods)
            except ShardError:
                raise
            except (ValueError, OSError, json.JSONDecodeError, UnicodeDecodeError, IndexError) as e:
                raise ShardError(f"{path}: sample {raw['__key__']!r}, {m}: cannot decode ({e}); the shard is corrupt") from None
        return out

    def _value(self, m: str, data: bytes, c: int, token_mods: dict):
        if m in token_mods:
            arr = np.load(io.BytesIO(data), allow_pickle=False)[c]
            t = torch.from_numpy(arr.astype(np.int64))
            vocab = token_mods[m]["vocab_size"]
            if self.check_vocab and t.numel() and int(t.max()) >= vocab:
                raise ShardError(f"{m}: token id {int(t.max())} >= vocab_size {vocab}")
            return t
        if m.startswith(PIXELS):
            arr = np.load(io.BytesIO(data), allow_pickle=False)[c]
            return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        value = spec(m).value if has_spec(m) else None
        if value == "text":
            return data.decode().strip()
        if value == "boxes":
            boxes = json.loads(data)[c]
            if self.det_format == "text":
                from fourm.data.text import boxes_to_text

                return boxes_to_text(boxes, 1)
            return boxes
        if m == CROPS:
            return json.loads(data)["crops"][c]
        raise ShardError(f"unknown shard modality {m!r}")


def _ext(m: str, token_mods: dict) -> str:
    if m in token_mods or m.startswith(PIXELS):
        return f"{m}.npy"
    if m == CROPS:
        return "crops.json"
    return SEQUENCE_FILES[m][0] if m in SEQUENCE_FILES else m


def _extras(raw: dict) -> list[str]:
    """The members a reader serves besides the token modalities: stored pixels, captions and boxes."""
    readable = {member: name for name, (member, _) in SEQUENCE_FILES.items() if spec(name).value in ("text", "boxes")}
    out = []
    for ext in raw:
        if ext.startswith(PIXELS) and ext.endswith(".npy"):
            out.append(ext[: -len(".npy")])
        elif ext in readable:
            out.append(readable[ext])
    return out
