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
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from fourm.modalities import ModalitySpec, spec
from fourm.modalities.codecs import atomic_write_bytes

JPEG_QUALITY = 95

# The folders a world split has, in the order they are written; their specs say how each is stored.
WORLD_MODALITIES = ("rgb", "depth", "normal", "semseg", "instance", "det", "caption")
FOURM_MODALITIES: dict[str, ModalitySpec] = {m: spec(m) for m in WORLD_MODALITIES}


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def folder_modality(name: str, root: str | os.PathLike | None = None) -> ModalitySpec:
    """The spec of a modality folder (:func:`fourm.modalities.spec`); with ``root``, the folder must exist."""
    s = spec(name)
    if root is not None and not (Path(root) / name).is_dir():
        raise FileNotFoundError(f"{Path(root) / name}: no such modality folder; folders there: "
                                f"{sorted(p.name for p in Path(root).iterdir() if p.is_dir())}")
    return s


def read_world_meta(split_root: str | os.PathLike) -> dict:
    """The world.json of a split folder (seed, size, classes, semseg_classes, camera convention)."""
    path = Path(split_root) / "world.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {split_root} is not a world split (write one with `fourm-bench world`)")
    return json.loads(path.read_text())


# --- standard layouts written from a world -------------------------------------------------------------------
LAYOUTS = ("in1k", "coco", "ade20k", "nyuv2")
SPLIT_NAMES = {  # world split -> folder name in each layout
    "in1k": {"train": "train", "val": "val"},
    "coco": {"train": "train2017", "val": "val2017"},
    "ade20k": {"train": "training", "val": "validation"},
    "nyuv2": {"train": "train", "val": "test"},
}


def world_stems(split_root: str | os.PathLike) -> list[str]:
    """Stems present in every world modality folder of a split (sorted); missing files raise naming them."""
    split_root = Path(split_root)
    per_mod = {}
    for m in WORLD_MODALITIES:
        folder = split_root / m
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: {split_root} is not a complete world split "
                                    f"(re-run `fourm-bench world` with the same --out/--seed to finish it)")
        ext = FOURM_MODALITIES[m].ext
        per_mod[m] = {p.name[: -len(ext)] for p in folder.iterdir() if p.name.endswith(ext) and not p.name.startswith(".")}
    stems = set.union(*per_mod.values())
    incomplete = sorted(f"{split_root / m / (s + FOURM_MODALITIES[m].ext)}" for m in per_mod for s in stems - per_mod[m])
    if incomplete:
        raise FileNotFoundError(f"world split {split_root} is incomplete, missing {len(incomplete)} files, e.g. "
                                f"{incomplete[:3]}; re-run `fourm-bench world` with the same --out/--seed to finish it")
    return sorted(stems)


def scene_class(instance: np.ndarray, boxes: list) -> str:
    """Class of the object with the most visible pixels (the world's image-level label)."""
    areas = np.bincount(instance.reshape(-1).astype(np.int64), minlength=len(boxes) + 1)[1:]
    return boxes[int(np.argmax(areas))][4]


def _write_if_missing(path: Path, make_bytes: Callable[[], bytes]) -> bool:
    if path.exists():
        return False
    atomic_write_bytes(path, make_bytes())
    return True


def _coco_annotations(split_root: Path, stems: list[str], classes: list[str], size: int) -> dict:
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for image_id, stem in enumerate(stems, start=1):
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": size, "height": size})
        instance = FOURM_MODALITIES["instance"].decode(FOURM_MODALITIES["instance"].path(split_root, stem))
        boxes = FOURM_MODALITIES["det"].decode(FOURM_MODALITIES["det"].path(split_root, stem))
        for inst, (x0, y0, x1, y1, cls) in enumerate(boxes, start=1):
            mask = np.asfortranarray((instance == inst).astype(np.uint8))
            rle = mask_utils.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": classes.index(cls) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "iscrowd": 0, "segmentation": rle,
            })
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(classes)]
    return {"info": {"description": "fourm-bench synthetic world"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


def write_layouts(world_root: str | os.PathLike, out_root: str | os.PathLike, which=LAYOUTS, splits=("train", "val")) -> Path:
    """Write the scenes of ``<world_root>/<split>`` as ImageNet / COCO / ADE20K / NYUv2 trees under ``out_root``.

    Images are re-encoded as JPEG; labels keep their exact values (COCO masks as RLE of the instance masks,
    ADE20K annotations = world semseg (0 = ignore, 1.. = SEMSEG_CLASSES[1:]), NYUv2 annotations = 16-bit depth in mm).
    Existing image/label files are kept (idempotent); COCO JSONs and meta files are rewritten atomically.
    """
    world_root, out_root = Path(world_root), Path(out_root)
    if not splits:
        raise ValueError("write_layouts: give at least one split")
    unknown = sorted(set(which) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"write_layouts: unknown layouts {unknown}; choose from {list(LAYOUTS)}")
    for split in splits:
        split_root = world_root / split
        meta = read_world_meta(split_root)
        classes, semseg_classes, size = meta["classes"], meta["semseg_classes"], meta["size"]
        stems = world_stems(split_root)
        rgb_path = lambda s: FOURM_MODALITIES["rgb"].path(split_root, s)  # noqa: E731
        jpeg = lambda s: (lambda: _jpeg_bytes(FOURM_MODALITIES["rgb"].decode(rgb_path(s))))  # noqa: E731
        copy = lambda p: (lambda: Path(p).read_bytes())  # noqa: E731
        for stem in tqdm(stems, desc=f"layouts {split}", unit="img"):
            if "in1k" in which:
                boxes = FOURM_MODALITIES["det"].decode(FOURM_MODALITIES["det"].path(split_root, stem))
                inst = FOURM_MODALITIES["instance"].decode(FOURM_MODALITIES["instance"].path(split_root, stem))
                label = scene_class(inst, boxes)
                _write_if_missing(out_root / "in1k" / SPLIT_NAMES["in1k"][split] / label / f"{stem}.JPEG", jpeg(stem))
            if "coco" in which:
                _write_if_missing(out_root / "coco" / SPLIT_NAMES["coco"][split] / f"{stem}.jpg", jpeg(stem))
            if "ade20k" in which:
                name = SPLIT_NAMES["ade20k"][split]
                _write_if_missing(out_root / "ade20k" / "images" / name / f"{stem}.jpg", jpeg(stem))
                _write_if_missing(out_root / "ade20k" / "annotations" / name / f"{stem}.png",
                                  copy(FOURM_MODALITIES["semseg"].path(split_root, stem)))
            if "nyuv2" in which:
                name = SPLIT_NAMES["nyuv2"][split]
                _write_if_missing(out_root / "nyuv2" / "images" / name / f"{stem}.jpg", jpeg(stem))
                _write_if_missing(out_root / "nyuv2" / "annotations" / name / f"{stem}.png",
                                  copy(FOURM_MODALITIES["depth"].path(split_root, stem)))
                _write_if_missing(out_root / "nyuv2" / "semseg" / name / f"{stem}.png",
                                  copy(FOURM_MODALITIES["semseg"].path(split_root, stem)))
        if "coco" in which:
            ann = _coco_annotations(split_root, stems, classes, size)
            path = out_root / "coco" / "annotations" / f"instances_{SPLIT_NAMES['coco'][split]}.json"
            atomic_write_bytes(path, json.dumps(ann).encode())
    # what each layout's labels mean, for consumers that set their dataset's metainfo
    layout_meta = {
        "in1k": {"classes": classes, "note": "folders exist only for classes that occur; index labels by this list"},
        "coco": {"classes": classes, "category_ids": "1 + index in classes"},
        "ade20k": {"classes": semseg_classes[1:], "reduce_zero_label": True},
        "nyuv2": {"depth_scale": 1000, "semseg_classes": semseg_classes[1:], "semseg_reduce_zero_label": True},
    }
    for name in which:
        atomic_write_bytes(out_root / name / "meta.json", (json.dumps(layout_meta[name], indent=2) + "\n").encode())
    return out_root


def cli(argv: list[str]) -> int:
    """`python -m fourm.data.layouts WORLD OUT [--which in1k,coco] [--splits train,val]` (also: `fourm-bench world --layouts`)."""
    p = argparse.ArgumentParser(prog="fourm.data.layouts", description="write standard dataset layouts of a world")
    p.add_argument("world")
    p.add_argument("out")
    p.add_argument("--which", default=",".join(LAYOUTS))
    p.add_argument("--splits", default="train,val")
    a = p.parse_args(argv)
    write_layouts(a.world, a.out, tuple(a.which.split(",")), tuple(a.splits.split(",")))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(cli(sys.argv[1:]))
