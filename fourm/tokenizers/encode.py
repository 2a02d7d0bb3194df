"""Pretokenize a 4M-layout dataset into token shards.

``fourm-bench tokenize encode data=<dataset> split=train out=<folder> tokenizers.depth=<run> tokenizers.semseg=<run>
crops=4`` reads a 4M split folder, the official hierarchical layout, or official per-modality shards
(``data=/data/[rgb,depth,semseg,caption,det]/shard-{00000..00099}.tar``: each encoded into the output shard of its
name) and writes the official per-modality shards ``<out>/<split>/<modality>/shard-00000.tar ...``
(:mod:`fourm.tokenizers.layout`; ``layout=folders`` the official folder layout, ``layout=fourm`` the project's
single tars of :mod:`fourm.tokenizers.shards`) and, last, the index ``<out>/<split>.json`` (shards, sample counts,
bytes, modalities, ``pattern``: the data path to pretrain on, ``root``: the split's folder).

Idempotent and resumable: each shard records the hash of the encode config (``encode_id``); a rerun keeps shards
whose header matches and rewrites only missing ones. Shards or an index written with a different config are never
replaced unless ``overwrite=true``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from fourm import modalities as registry
from fourm.data.labelers21 import metadata_bins
from fourm.data.serialize import lab_bins, metadata_to_chunks, palette_to_text
from fourm.files import atomic_write_text
from fourm.runs import atomic_write_json, canonical_json
from fourm.threads import torch_threads
from fourm.modalities import spec
from fourm.tokenizers import layout, official
from fourm.tokenizers.checkpoint import load_tokenizer
from fourm.tokenizers.mlp_vqvae import MLPVQVAE
from fourm.tokenizers.modality_io import (
    center_box,
    crop_boxes,
    crop_resize_flip,
    list_stems,
    random_box,
    read_raw,
    scale_box,
    split_root,
    to_tensor,
)
from fourm.tokenizers.sam import sam_instance_text
from fourm.tokenizers.shards import SEQUENCE_FILES, ShardError, read_header, token_dtype, write_shard
from fourm.tokenizers.vqvae import VQVAE

RGB_NAME = "rgb@224"  # the 4M name of the raw RGB input


def crop_plan(stem: str, height: int, width: int, cfg: dict) -> list[tuple[int, int, int, int, bool]]:
    """The crops of one image: crop 0 is the full image (centre square); the rest are seeded by (seed, stem)."""
    plan = [(*center_box(height, width), False)]
    gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + zlib.crc32(stem.encode()))
    for _ in range(cfg["crops"] - 1):
        box = random_box(height, width, gen, tuple(cfg["crop_scale"]), tuple(cfg["crop_ratio"]))
        flip = bool(cfg["flip"]) and bool(torch.rand(1, generator=gen) < 0.5)
        plan.append((*box, flip))
    return plan


# modality folder -> what its tokenizer's config names as its modality, where the two differ
TOKENIZER_MODALITY = {"sam_instance": "sam_mask"}
# text modalities copied from the split's folders into shards (sam_instance is written from its mask tokenizer)
TEXT_MODALITIES = tuple(m for m in SEQUENCE_FILES if m != "sam_instance")


def load_tokenizers(spec: dict, official_image_size: int = 224) -> dict[str, VQVAE | MLPVQVAE]:
    """``{modality folder: run folder, .safetensors or Hugging Face id}`` (null entries skipped) -> loaded tokenizers.

    Spatial VQ-VAEs for image-like folders (rgb, depth, normal, semseg, edges, feature maps), MLP VQ-VAEs for folders
    of vectors (``dinov2_global``...), and the mask tokenizer for ``sam_instance`` (which becomes text). An official
    4M tokenizer serves the folder it is given for, through the official input transform, at
    ``official_image_size`` px."""
    out = {}
    for mod, path in spec.items():
        if path is None:
            continue
        model = load_tokenizer(path)
        if isinstance(model, official.VQVAE | official.DiVAE):
            vectors = isinstance(model.quantize, official.Memcodes)  # a global-embedding tokenizer: a vector folder
            out[mod] = official.ForVectors(model, mod) if vectors else official.ForModality(model, mod, official_image_size)
            continue
        want = TOKENIZER_MODALITY.get(mod, mod)
        if model.config.modality != want:
            raise ValueError(f"tokenizers.{mod}={path} is a {model.config.modality!r} tokenizer, not {want!r}")
        out[mod] = model
    if not out:
        raise ValueError("no tokenizers given; pass e.g. tokenizers.depth=<run folder or tokenizer.safetensors>")
    return out


def _token_models(models: dict) -> dict:
    """The tokenizers whose ids are stored as token arrays (all but the sam_instance mask tokenizer)."""
    return {m: t for m, t in models.items() if m not in TOKENIZER_MODALITY}


def _check_registry(model, path) -> None:
    name = model.config.token_modality
    try:
        mod = registry.get(name)
    except KeyError:
        raise ValueError(
            f"tokenizer {path} writes tokens as {name!r}, which is not a registered modality; "
            "register it with fourm.modalities.register or set token_modality when training"
        ) from None
    if mod.kind != "image_tokens":
        raise ValueError(f"tokenizer {path} writes tokens as {name!r}, a {mod.kind} modality; its tokens need an "
                         "image_tokens modality (a grid or global tokens)")
    if mod.vocab_size is None or model.config.codebook_size > mod.vocab_size:
        raise ValueError(
            f"tokenizer {path}: codebook_size {model.config.codebook_size} exceeds {name}'s vocab_size {mod.vocab_size}"
        )


def encode_id(cfg: dict, models: dict[str, VQVAE], stems: list[str]) -> str:
    """Hash of what decides shard contents: the config, the samples encoded and the tokenizers' weights.

    The samples count because a split that grew (more world images) would otherwise read as "already encoded"."""
    h = hashlib.sha256(canonical_json({k: v for k, v in cfg.items()
                                       if k not in ("overwrite", "threads", "out", "device", "part")}).encode())
    h.update(canonical_json(list(stems)).encode())
    for mod in sorted(models):
        for k, v in models[mod].state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_dataset(cfg: dict, progress: bool = True) -> dict:
    """Write the token shards of one split; returns the index (also written to ``<out>/<split>.json``)."""
    with torch_threads(cfg.get("threads")):
        return _encode_dataset(cfg, progress)


def _encode_dataset(cfg: dict, progress: bool = True) -> dict:
    cfg = dict(cfg)
    for key in ("crops", "samples_per_shard", "batch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{key}={cfg[key]!r}: a whole number >= 1" +
                             (" (crop 0 is the full image)" if key == "crops" else ""))
    src = None
    if layout.is_shard_path(cfg["data"]):  # the official per-modality shards of a labelled dataset
        src = layout.parse(cfg["data"])
        if src.layout != "wds":
            raise ValueError(f"data={cfg['data']}: a shard path names its modality folders in brackets, e.g. "
                             "/data/cc12m/[rgb,depth,caption,det]/shard-{00000..00099}.tar")
        root, present = None, set(src.folders)
    else:
        cfg["data"] = str(Path(cfg["data"]).resolve())
        root = split_root(cfg["data"], cfg["split"])
        present = {p.name for p in root.iterdir() if p.is_dir()}
    # local paths made absolute (the shards' header names them); Hugging Face ids kept as they are
    spec = {k: (str(Path(v).resolve()) if v is not None and Path(v).exists() else v) for k, v in cfg["tokenizers"].items()}
    cfg["tokenizers"] = spec
    models = load_tokenizers(spec, cfg.get("official_image_size") or 224)
    device = cfg.get("device") or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available here; use device=cpu")
    for m in _token_models(models).values():  # the sam_instance mask tokenizer stays on the CPU, with its id maps
        m.to(device)
    for mod, model in _token_models(models).items():
        _check_registry(model, spec[mod])
    unknown = [m for m in cfg["text"] if m not in TEXT_MODALITIES]
    if unknown:
        raise ValueError(f"text={list(cfg['text'])}: no shard format for {unknown}; text modalities are {TEXT_MODALITIES}")
    text_mods = [m for m in cfg["text"] if m in present]
    for m in cfg.get("embeddings", []):
        if registry.get(m).kind != "embedding_sequence":
            raise ValueError(f"embeddings={list(cfg['embeddings'])}: {m!r} is a {registry.get(m).kind} modality, not an "
                             "embedding sequence (e.g. t5_caption)")
    emb_mods = [m for m in cfg.get("embeddings", []) if m in present]
    needed = [*models, *(["rgb"] if cfg["store_rgb"] else [])]
    if src is not None:  # encoded shard by shard: the input's shards are the output's
        missing = [m for m in needed if m not in present]
        if missing:
            raise ValueError(f"data={cfg['data']}: no {missing[0]!r} folder in its brackets (it has {sorted(present)}); "
                             f"add it, or drop tokenizers.{missing[0]} / store_rgb")
        if cfg.get("max_samples"):
            raise ValueError("max_samples=: shards are encoded whole; name fewer shards in data= instead")
        if (cfg.get("layout") or "wds") == "fourm":
            raise ValueError("layout=fourm: per-modality shards are encoded into the official layouts (wds, folders)")
        stems = [f"shard:{u}" for u in src.units]  # what is encoded, for the encode id: the shard list
    else:
        stems = list_stems(root, needed)
        if cfg.get("max_samples"):
            stems = stems[: cfg["max_samples"]]
        keys = [s.rpartition("/")[2] for s in stems]
        if len(set(keys)) != len(keys):
            from collections import Counter

            twice = sorted(k for k, n in Counter(keys).items() if n > 1)[:3]
            raise ValueError(f"{root}: the keys {twice} appear in more than one folder; a sample's key must be unique "
                             "across the dataset's folders (the shards are keyed by it)")
    sizes = [m.config.image_size for m in _spatial(models).values() if not _is_feature_map(m)]
    rgb_size = cfg.get("rgb_size") or max(sizes, default=224)
    eid = encode_id(cfg, models, stems)

    out = Path(cfg["out"])
    index_path = out / f"{cfg['split']}.json"
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if old.get("encode_id") == eid:
            print(f"{index_path}: already encoded with this config; nothing to do")
            return old
        if not cfg["overwrite"]:
            raise ValueError(
                f"{index_path} was written by a different encode config, tokenizer or set of samples "
                f"(encode_id {old.get('encode_id')} != {eid}; {old.get('samples', '?')} samples then, {len(stems)} now); "
                f"use another out=, pass overwrite=true to replace those shards, or delete {out} (e.g. data/demo/shards "
                "for `make demo`) to encode afresh"
            )

    modalities = {
        m.config.token_modality: {
            "vocab_size": m.config.codebook_size,
            "grid": m.config.grid,
            "image_size": getattr(m.config, "image_size", None),
            "source": mod,
            "tokenizer": spec[mod],
        }
        for mod, m in _token_models(models).items()
    }
    if "sam_instance" in models:
        text_mods.append("sam_instance")
    header = {"encode_id": eid, "crops": cfg["crops"], "modalities": modalities, "split": cfg["split"]}
    if cfg["store_rgb"]:
        header["rgb"] = {"name": RGB_NAME, "size": rgb_size}

    per = cfg["samples_per_shard"]
    # a chunk is one output shard: a list of stems, or an input shard (its unit) read and encoded whole
    chunks = list(src.units) if src is not None else [stems[i : i + per] for i in range(0, len(stems), per)]
    layout_name = cfg.get("layout") or "wds"
    if layout_name not in layout.LAYOUTS:
        raise ValueError(f"layout={layout_name!r}: one of {list(layout.LAYOUTS)}")
    if cfg.get("part"):  # one SLURM array task: its range of shards, no index (a run without part= writes it)
        from fourm.data.labeling import parse_part, part_of

        mine = set(part_of(list(range(len(chunks))), parse_part(cfg["part"])))
        chunks = [chunk if i in mine else None for i, chunk in enumerate(chunks)]
    if layout_name != "fourm":
        return _encode_official(cfg, root, chunks, models, text_mods, emb_mods, rgb_size, modalities, eid, out,
                                index_path, progress, src)
    names = [f"{cfg['split']}-{i:06d}.tar" for i in range(len(chunks))]
    shards, t0, written = [], time.perf_counter(), 0
    bar = tqdm(total=len(stems), desc=f"encode {cfg['split']}", unit="img", disable=not progress)
    for name, chunk in zip(names, chunks):
        if chunk is None:  # another part's shard
            continue
        path = out / name
        if path.exists():
            try:
                existing = read_header(path)
            except ShardError:
                existing = {}
            if existing.get("encode_id") == eid and existing.get("samples") == len(chunk):
                shards.append({"file": name, "samples": len(chunk), "bytes": path.stat().st_size})
                bar.update(len(chunk))
                continue
            if not cfg["overwrite"]:
                raise ValueError(
                    f"{path} exists and was not written by this encode config; "
                    "use another out= or pass overwrite=true to replace it"
                )
        samples = _encode_chunk(root, chunk, models, text_mods, emb_mods, cfg, rgb_size, bar)
        size = write_shard(path, header, samples)
        shards.append({"file": name, "samples": len(chunk), "bytes": size})
        written += 1
    bar.close()
    if cfg.get("part"):
        return _part_result(cfg, shards, written, t0)

    index = {
        "encode_id": eid,
        "pattern": f"{out.resolve()}/{cfg['split']}-{{{0:06d}..{len(chunks) - 1:06d}}}.tar",
        "samples": len(stems),
        "crops": cfg["crops"],
        "modalities": modalities,
        "rgb": header.get("rgb"),
        "text": text_mods,
        "embeddings": emb_mods,
        "shards": shards,
        "bytes": sum(s["bytes"] for s in shards),
        "seconds": round(time.perf_counter() - t0, 2),
        "shards_written": written,
        "config": cfg,
    }
    atomic_write_json(index_path, index)
    return index


def _unit_samples(src, unit: str, folders: list[str], models, text_mods, emb_mods, cfg, rgb_size, bar) -> list[dict]:
    """Encode one input shard: its samples' files written to a temporary split folder (each modality's file form),
    then encoded as a folder chunk, in the shard's key order."""
    import tempfile

    from fourm.data.layouts import folder_modality

    with tempfile.TemporaryDirectory(prefix="encode-") as tmp:
        keys = []
        for raw in layout.read_unit(src, unit, folders):
            for m in folders:
                dest = Path(tmp) / m / f"{raw.key}{folder_modality(m).ext}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(raw.files[m][1])
            keys.append(raw.key)
        return _encode_chunk(Path(tmp), keys, models, text_mods, emb_mods, cfg, rgb_size, bar, official_files=True)


def _shard_samples(split_out: Path, kind: str, name: str) -> int:
    """Samples in an output shard already written (its crop settings: one member or file per sample)."""
    import tarfile

    if kind == "wds":
        with tarfile.open(split_out / layout.CROP_SETTINGS / f"{name}.tar") as tar:
            return sum(1 for m in tar if m.isfile())
    return sum(1 for p in (split_out / layout.CROP_SETTINGS / name).iterdir() if p.is_file())


def _encode_official(cfg, root, chunks, models, text_mods, emb_mods, rgb_size, modalities, eid, out, index_path,
                     progress, src=None) -> dict:
    """Write the official layout (``layout=wds`` or ``folders``) under ``<out>/<split>/``: the same crops and tokens as
    the project's shards, in the files the official code reads (:mod:`fourm.tokenizers.layout`)."""
    kind = cfg["layout"]
    split_out = out / cfg["split"]
    split_out.mkdir(parents=True, exist_ok=True)
    marker = split_out / ".encode_id"
    if marker.exists() and marker.read_text().strip() != eid:
        if not cfg["overwrite"]:
            raise ValueError(f"{split_out} holds shards of another encode config (encode_id {marker.read_text().strip()} "
                             f"!= {eid}); use another out=, or pass overwrite=true to replace them")
        import shutil

        shutil.rmtree(split_out)
        split_out.mkdir(parents=True)
    atomic_write_text(marker, eid)  # array tasks of one encode write the same id
    folders = [*modalities, layout.CROP_SETTINGS, *(["rgb"] if cfg["store_rgb"] else []), *text_mods, *emb_mods]
    t0, written, shards = time.perf_counter(), 0, []
    if src is not None:  # the input shards' names; progress counted in shards
        inputs = sorted({*(m["source"] for m in modalities.values()), *(["rgb"] if cfg["store_rgb"] else []),
                         *(m for m in text_mods if m != "sam_instance"), *emb_mods,
                         *(["sam_instance"] if "sam_instance" in models else [])})
        bar = tqdm(total=sum(1 for c in chunks if c), desc=f"encode {cfg['split']}", unit="shard", disable=not progress)
    else:
        bar = tqdm(total=sum(len(c) for c in chunks if c), desc=f"encode {cfg['split']}", unit="img",
                   disable=not progress)
    for i, chunk in enumerate(chunks):
        if chunk is None:  # another part's shard
            continue
        name = chunk.strip("/").removesuffix(".tar") if src is not None else layout.shard_name(i)
        if layout.shard_complete(split_out, kind, name, folders):
            shards.append({"file": name, "samples": _shard_samples(split_out, kind, name) if src is not None
                           else len(chunk)})
            bar.update(1 if src is not None else len(chunk))
            continue
        if src is not None:
            samples = _unit_samples(src, chunk, inputs, models, text_mods, emb_mods, cfg, rgb_size, tqdm(disable=True))
            bar.update(1)
        else:
            samples = _encode_chunk(root, chunk, models, text_mods, emb_mods, cfg, rgb_size, bar, official_files=True)
        files = [(s["__key__"], _official_files(s, modalities, emb_mods)) for s in samples]
        size = layout.write_sample_files(split_out, kind, name, files)
        shards.append({"file": name, "samples": len(samples), "bytes": size})
        written += 1
    bar.close()
    if cfg.get("part"):
        return _part_result(cfg, shards, written, t0)
    index = {
        "encode_id": eid,
        "layout": kind,
        "pattern": (layout.data_path(split_out, kind, folders, len(chunks)) if src is None
                    else f"{split_out.resolve()}/[{','.join(folders)}]" + src.path.split("]", 1)[1]
                    if kind == "wds" else str(split_out.resolve())),
        "root": str(split_out.resolve()),
        "samples": sum(sh["samples"] for sh in shards),
        "crops": cfg["crops"],
        "modalities": modalities,
        "rgb": {"name": RGB_NAME, "size": rgb_size} if cfg["store_rgb"] else None,
        "text": text_mods,
        "embeddings": emb_mods,
        "shards": shards,
        "bytes": sum(s.get("bytes", 0) for s in shards),
        "seconds": round(time.perf_counter() - t0, 2),
        "shards_written": written,
        "config": cfg,
    }
    atomic_write_json(index_path, index)
    return index


def _part_result(cfg: dict, shards: list, written: int, t0: float) -> dict:
    """What one part (array task) of an encode did; the index is written by the run without ``part``."""
    return {"part": cfg["part"], "samples": sum(s["samples"] for s in shards), "shards": shards,
            "bytes": sum(s.get("bytes", 0) for s in shards), "shards_written": written, "crops": cfg["crops"],
            "seconds": round(time.perf_counter() - t0, 2), "modalities": {}, "pattern": None}


def _official_files(sample: dict, modalities: dict, emb_mods: list[str]) -> dict[str, tuple[str, bytes]]:
    """One encoded sample as the official per-modality files."""
    from fourm.tokenizers.shards import npy_bytes

    files = {}
    crops = sample["crops.json"]
    files[layout.CROP_SETTINGS] = ("npy", npy_bytes(np.asarray(crops["crops"], dtype=np.int32)))
    for name, info in modalities.items():
        files[name] = ("npy", npy_bytes(layout.official_tokens(sample[f"{name}.npy"], info["vocab_size"])))
    if "_rgb_file" in sample:
        files["rgb"] = sample["_rgb_file"]
    for m, (member, _) in SEQUENCE_FILES.items():
        if member not in sample:
            continue
        if m == "det":
            h, w = crops["size"]
            files[m] = ("json", json.dumps(layout.det_json(sample["_det_full"], h, w)).encode())
        elif member.endswith(".txt"):
            files[m] = ("txt", sample[member].encode())
        else:
            files[m] = ("json", json.dumps(sample[member], separators=(",", ":")).encode())
    for m in emb_mods:
        files[m] = ("npy", npy_bytes(sample[f"{m}.npy"]))
    return files


def _spatial(models: dict) -> dict:
    return {m: t for m, t in models.items() if isinstance(t, VQVAE | official.ForModality) and m not in TOKENIZER_MODALITY}


def _is_feature_map(model) -> bool:
    return model.config.kind == "feature"


def _encode_chunk(root, stems, models, text_mods, emb_mods, cfg, rgb_size, bar, official_files: bool = False) -> list[dict]:
    """Samples of one shard: every crop of every image through every tokenizer, in batches.

    Crops are planned in the pixels of the images (edges, depth, ... must share their size); a feature map (e.g. 16 x
    16 ViT cells) is cut at the same region scaled to its grid. Vectors (global embeddings), palettes and metadata
    describe the whole image: every crop gets the same."""
    spatial, samples, pending = _spatial(models), [], []
    for stem in stems:
        raws = {mod: to_tensor(mod, read_raw(root, mod, stem)) for mod in spatial}
        rgb = to_tensor("rgb", read_raw(root, "rgb", stem)) if cfg["store_rgb"] else None
        pixels = {m: x for m, x in raws.items() if not _is_feature_map(spatial[m])}
        if rgb is not None:
            pixels["rgb"] = rgb
        ids = to_tensor("sam_instance", read_raw(root, "sam_instance", stem)) if "sam_instance" in models else None
        if ids is not None:
            pixels["sam_instance"] = ids
        if not pixels:
            raise ValueError(f"{root}: only feature maps to encode; crops are planned in pixels, so pass an image "
                             "modality too (store_rgb=true or a tokenizer of rgb, depth, ...)")
        h, w = next(iter(pixels.values())).shape[-2:]
        for mod, x in pixels.items():
            if x.shape[-2:] != (h, w):
                raise ValueError(f"{root}/{mod}/{stem}: size {tuple(x.shape[-2:])} differs from {(h, w)} of the other modalities")
        # a hierarchical stem <folder>/<key> is stored, and its crops seeded, by its key (unique across the folders)
        key = stem.rpartition("/")[2]
        plan = crop_plan(key, h, w, cfg)
        sample = {"__key__": key, "crops.json": {"size": [int(h), int(w)], "crops": [list(p) for p in plan]}}
        for mod, x in raws.items():
            size = spatial[mod].config.image_size
            boxes = [scale_box(p[:4], (h, w), tuple(x.shape[-2:])) if _is_feature_map(spatial[mod]) else p[:4] for p in plan]
            sample[f"_in.{mod}"] = torch.stack([crop_resize_flip(mod, x, b, size, p[4]) for b, p in zip(boxes, plan)])
        for mod, model in models.items():
            if isinstance(model, MLPVQVAE | official.ForVectors):
                v = torch.as_tensor(np.asarray(read_raw(root, mod, stem), dtype=np.float32)).flatten()
                sample[f"_in.{mod}"] = v[None].expand(len(plan), -1)
        if rgb is not None and official_files:  # the original file: the reader cuts the crops from it
            path = spec("rgb").path(root, stem)
            sample["_rgb_file"] = (path.name.partition(".")[2], path.read_bytes())
        elif rgb is not None:
            crops = torch.stack([crop_resize_flip("rgb", rgb, p[:4], rgb_size, p[4]) for p in plan])
            sample[f"{RGB_NAME}.npy"] = (crops.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        if ids is not None:
            sample[SEQUENCE_FILES["sam_instance"][0]] = [_sam_text(ids, p, key, c, models["sam_instance"], cfg)
                                           for c, p in enumerate(plan)]
        if "caption" in text_mods:
            sample[SEQUENCE_FILES["caption"][0]] = read_raw(root, "caption", stem)
        if "det" in text_mods:
            boxes = read_raw(root, "det", stem)
            sample[SEQUENCE_FILES["det"][0]] = [crop_boxes(boxes, p[:4], p[4]) for p in plan]
            if official_files:
                sample["_det_full"] = boxes
        if "color_palette" in text_mods:
            sample[SEQUENCE_FILES["color_palette"][0]] = palette_texts(read_raw(root, "color_palette", stem))
        for m in emb_mods:
            emb = np.asarray(read_raw(root, m, stem), dtype=np.float16)
            if emb.ndim != 2 or emb.shape[1] != registry.get(m).embedding_dim:
                raise ValueError(f"{root}/{m}/{stem}.npy: shape {emb.shape}, expected [length, "
                                 f"{registry.get(m).embedding_dim}] (the registry's embedding_dim of {m})")
            sample[f"{m}.npy"] = emb
        if "metadata" in text_mods:
            sample[SEQUENCE_FILES["metadata"][0]] = metadata_to_chunks(metadata_bins(read_raw(root, "metadata", stem)))
        samples.append(sample)
        pending.append(sample)
        if len(pending) * cfg["crops"] >= cfg["batch_size"]:
            _tokenize(pending, _token_models(models), cfg.get("device") or "cpu")
            bar.update(len(pending))
            pending = []
    if pending:
        _tokenize(pending, _token_models(models), cfg.get("device") or "cpu")
        bar.update(len(pending))
    return samples


def palette_texts(palettes: dict) -> list[str]:
    """A ``color_palette`` label (``{"1": [[L, a, b]], ...}``) -> one string per palette size, smallest first:
    pretraining picks one per step, as the official loader picks a random number of colours."""
    return [palette_to_text([lab_bins(c) for c in palettes[k]]) for k in sorted(palettes, key=int)]


def _sam_text(ids: torch.Tensor, plan_entry, stem: str, crop: int, tokenizer: VQVAE, cfg: dict) -> str:
    """The sam_instance string of one crop: its id map cut like the images, queried at seeded points."""
    top, left, h, w, flip = plan_entry
    cut = ids[top:top + h, left:left + w]
    cut = cut.flip(-1) if flip else cut
    seed = cfg["seed"] * 1_000_003 + zlib.crc32(f"{stem}/{crop}".encode())
    return sam_instance_text(cut.numpy(), tokenizer, num_points=cfg.get("sam_points", 7), seed=seed)


@torch.no_grad()
def _tokenize(samples: list[dict], models: dict, device: str = "cpu") -> None:
    for mod, model in models.items():
        x = torch.cat([s.pop(f"_in.{mod}") for s in samples])
        tokens = model.encode(x.to(device)).cpu().numpy()
        vocab = model.config.codebook_size
        if tokens.min() < 0 or tokens.max() >= vocab:  # cannot happen with argmax over the codebook; cheap to check
            raise RuntimeError(f"{mod} tokenizer produced ids outside [0, {vocab})")
        grid = model.config.grid
        tokens = tokens.astype(token_dtype(vocab)).reshape(len(tokens), grid, grid)
        i = 0
        for s in samples:
            n = len(s["crops.json"]["crops"])
            s[f"{model.config.token_modality}.npy"] = tokens[i : i + n]
            i += n


def cli(argv: list[str]) -> int:
    """``fourm-bench tokenize encode key=value ...`` (hydra overrides of configs/encode.yaml)."""
    from fourm.tokenizers.train import CONFIG_DIR, compose_config

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print((CONFIG_DIR / "encode.yaml").read_text())
        return 0
    try:
        cfg = compose_config("encode", [a for a in argv if a != "--print-config"])
        if "--print-config" in argv:
            print(OmegaConf.to_yaml(cfg))
            return 0
        index = encode_dataset(cfg, progress=os.environ.get("FOURM_NO_PROGRESS") is None)
    except (ValueError, FileNotFoundError, layout.DataError, ShardError) as e:  # each names its file or key
        print(f"fourm-bench tokenize encode: {e}", file=sys.stderr)
        return 2
    mb = index["bytes"] / 2**20
    if cfg.get("part"):
        print(f"part {cfg['part']}: {len(index['shards'])} shards ({index['shards_written']} written now, "
              f"{index['samples']} samples, {mb:.2f} MiB) in {index['seconds']} s; the index is written by the run "
              "without part= once every part is done")
        return 0
    print(
        f"{index['samples']} samples x {index['crops']} crops -> {len(index['shards'])} shards, {mb:.2f} MiB "
        f"({index['bytes'] / max(index['samples'], 1) / 1024:.1f} KiB/sample) in {index['seconds']} s\n"
        f"modalities: {', '.join(index['modalities'])}\npattern: {index['pattern']}"
    )
    return 0
