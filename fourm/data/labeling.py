"""Pseudo-labelling: run a labeler over an RGB folder and write one modality folder (the 4M way to get depth,
normals, CLIP features... for images that only have RGB).

    fourm-bench label --in world/train --labeler timm_features [--out DIR] [--batch-size 16]

Labelers are registered by name. Built in: ``world_gt_<modality>`` (copies the world's ground truth, a perfect
labeler for tests and upper bounds), ``timm_features`` (feature maps of a randomly initialised timm model, saved as
.npy), the labellers of the official 4M-7 data on real images (``dpt_depth`` / ``dpt_normal``: Omnidata DPT-Hybrid,
:mod:`fourm.data.dpt`; ``mask2former_semseg``: Mask2Former Swin-B COCO panoptic, :mod:`fourm.data.mask2former`;
``vitdet_boxes``: ViTDet Cascade Mask R-CNN, :mod:`fourm.data.vitdet`; ``clip_features``: CLIP-B/16 maps), and the
4M-21 labelers of :mod:`fourm.data.labelers21` (Canny and SAM edges, SAM instances, colour palettes, metadata,
DINOv2/ImageBind/CLIP maps and global embeddings). Runs are batched, resumable and split into parts (``--part i/n``)
for SLURM array jobs; weights come from local files (:mod:`fourm.data.weights`), or are seeded random ones.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fourm.configs import parse_cli
from fourm.data import dpt, labelers21, mask2former, vitdet  # noqa: F401  (these labelers register themselves)
from fourm.data.labeler import LABELERS, Labeler, create_labeler, register_labeler  # noqa: F401  (the labeling API)
from fourm.data.layouts import FOURM_MODALITIES, folder_modality
from fourm.data.official_layout import is_shard_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPEG", ".webp")


# --- built-in labelers -------------------------------------------------------------------------------------------
class WorldGroundTruth(Labeler):
    """Copies the world's ground truth of a modality for each stem (read from the world split next to the RGB)."""

    def __init__(self, modality: str, world_split: Path):
        self.name, self.modality, self.world_split = f"world_gt_{modality}", modality, Path(world_split)
        self.codec = FOURM_MODALITIES[modality]

    def __call__(self, images, stems):
        labels = []
        for stem in stems:
            path = self.codec.path(self.world_split, stem)
            if not path.exists():
                raise FileNotFoundError(f"{path}: {self.name} needs the world's {self.modality} for stem {stem!r} "
                                        f"(is {self.world_split} a world split made by `fourm-bench world`?)")
            labels.append(self.codec.decode(path))
        return labels


for _m in FOURM_MODALITIES:
    if FOURM_MODALITIES[_m].value != "image":  # every world modality but the images themselves
        register_labeler(f"world_gt_{_m}")(lambda in_dir, _m=_m, **_: WorldGroundTruth(_m, in_dir.parent))


class TimmFeatures(Labeler):
    """Feature maps (C, h, w) of a timm model with random weights (seeded), stored as float16 .npy.

    Stands in for CLIP/DINO feature labelers, which differ only in their weights.
    """

    def __init__(self, model: str = "resnet18", out_index: int = 3, seed: int = 0, device: str = "cpu"):
        import timm

        torch.manual_seed(seed)  # random but reproducible weights: the same labels on every run
        self.net = timm.create_model(model, pretrained=False, features_only=True, out_indices=(out_index,)).eval().to(device)
        cfg = self.net.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
        self.device = device
        self.name, self.modality = "timm_features", f"feat_{model}"
        self.codec = folder_modality(self.modality)

    @torch.no_grad()
    def __call__(self, images, stems):
        x = (images.to(self.device) - self.mean) / self.std
        feats = self.net(x)[0]
        return [f.cpu().numpy().astype(np.float16) for f in feats]


@register_labeler("timm_features")
def _timm_features(in_dir: Path, model: str = "resnet18", **options) -> Labeler:
    return TimmFeatures(model=model, **options)


# --- running a labeler over a folder -----------------------------------------------------------------------------
BAD_IMAGE = ("skip", "stop")
LOG_NAME = ".label_log.jsonl"  # one record per run in the output folder (dot files are not modality files)


def rgb_folder(in_dir: str | os.PathLike) -> Path:
    """The folder of RGB images: ``in_dir`` itself, or ``in_dir/rgb`` for a 4M split folder."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"--in {in_dir}: no such folder (pass a folder of RGB images or a split with rgb/)")
    return in_dir / "rgb" if (in_dir / "rgb").is_dir() else in_dir


def list_images(rgb_dir: Path) -> list[Path]:
    """The images of an RGB folder, as relative paths: files directly in it, or one level down (the official
    hierarchical layout ``rgb/<folder>/<key>.jpg``, whose labels go to ``<modality>/<folder>/``)."""
    def images_in(d: Path):
        return sorted(p for p in d.iterdir() if p.suffix in IMAGE_EXTS and not p.name.startswith(".") and p.is_file())

    found = [p.relative_to(rgb_dir) for p in images_in(rgb_dir)]
    if not found:
        for sub in sorted(d for d in rgb_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            found += [p.relative_to(rgb_dir) for p in images_in(sub)]
    return found


def parse_part(part: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if not part:
        return 0, 1
    try:
        i, n = (int(v) for v in str(part).split("/"))
    except ValueError:
        raise ValueError(f"--part {part!r}: expected i/n, e.g. 3/100 for the 4th of 100 parts") from None
    if not 0 <= i < n:
        raise ValueError(f"--part {part!r}: i must be in [0, n)")
    return i, n


def part_of(items: list, part: tuple[int, int]) -> list:
    """The ``i``-th of ``n`` contiguous, near-equal ranges of ``items`` (a SLURM array task's share)."""
    i, n = part
    return items[len(items) * i // n: len(items) * (i + 1) // n]


def rgb_from_bytes(data: bytes, where: str) -> torch.Tensor:
    """An encoded image -> float [3, H, W] in [0, 1]; an undecodable one is a ValueError naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for bad files; all mean the same to the user
        raise ValueError(f"{where}: cannot read this image ({type(e).__name__}: {e}); replace or delete it and "
                         "re-run") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def read_rgb(path: Path) -> torch.Tensor:
    return rgb_from_bytes(Path(path).read_bytes(), str(path))


def label_in_size_groups(labeler: Labeler, items: list[tuple[str, torch.Tensor]]) -> list:
    """The labels of ``(stem, image)`` items, in their order: images of one size share a batch (images of different
    sizes cannot share a tensor)."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, img) in enumerate(items):
        groups.setdefault(tuple(img.shape), []).append(i)
    out: list = [None] * len(items)
    for idx in groups.values():
        labels = labeler(torch.stack([items[i][1] for i in idx]), [items[i][0] for i in idx])
        if len(labels) != len(idx):
            raise RuntimeError(f"labeler {labeler.name} returned {len(labels)} labels for {len(idx)} images")
        for i, label in zip(idx, labels):
            out[i] = label
    return out


def _log_run(out_dir: Path, labeler: Labeler, part: tuple[int, int], started: float, **counts) -> None:
    """One record of a labelling run in ``<out>/.label_log.jsonl``: appends of one short line, so concurrent array
    tasks do not interleave."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"labeler": labeler.name, "weights": getattr(labeler, "weights", None), "part": list(part), **counts,
              "seconds": round(time.time() - started, 3)}
    with open(out_dir / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")


def label_shards(path: str, labeler: Labeler, out_root: str | os.PathLike | None = None, batch_size: int = 16,
                 part: tuple[int, int] = (0, 1), on_bad_image: str = "skip", progress: bool = True) -> dict:
    """Label the RGB shards of a per-modality webdataset data path (its brackets name ``rgb``): per input shard one
    output shard ``<root>/<labeler.modality>/<shard>.tar`` (written whole or not at all; kept when there), members
    ``<key>.<ext>`` with the input's keys in its order. ``part``: this task's contiguous range of the shards. An image
    that cannot be decoded stops the run (``on_bad_image="stop"``) or is left out of the output shard and counted."""
    from fourm.data import official_layout as ol

    if on_bad_image not in BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r}: one of {', '.join(BAD_IMAGE)}")
    try:
        src = ol.parse(path)
    except ol.DataError as e:
        raise FileNotFoundError(str(e)) from None
    if src.layout != "wds" or "rgb" not in src.folders:
        raise ValueError(f"--in {path}: a shard path names its RGB folder in brackets, e.g. /data/cc12m/[rgb]/shard-"
                         "{00000..00099}.tar")
    out_root = Path(out_root) if out_root is not None else Path(src.prefix)
    if ol.is_remote(str(out_root)):
        raise ValueError(f"{out_root}: labels are written to a local folder; pass --out <local folder>")
    ext = labeler.codec.ext.lstrip(".")
    units = part_of(list(src.units), part)
    labelled = already = 0
    bad: list[str] = []
    started = time.time()
    bar = tqdm(total=len(units), desc=f"label {labeler.name}", unit="shard", disable=not progress)
    for unit in units:
        name = unit.strip("/").removesuffix(".tar")
        if (out_root / labeler.modality / f"{name}.tar").exists():
            already += 1
            bar.update(1)
            continue
        members: list[tuple[str, dict]] = []
        pending: list[tuple[str, torch.Tensor]] = []

        def flush():
            labels = label_in_size_groups(labeler, pending)
            members.extend((k, {labeler.modality: (ext, labeler.encode(lab))}) for (k, _), lab in zip(pending, labels))
            pending.clear()

        for raw in ol.read_unit(src, unit, ["rgb"]):
            try:
                pending.append((raw.key, rgb_from_bytes(raw.files["rgb"][1], f"{raw.where}: {raw.key}")))
            except ValueError:
                if on_bad_image == "stop":
                    raise
                bad.append(f"{name}/{raw.key}")
            if len(pending) >= batch_size:
                flush()
        flush()
        ol.write_sample_files(out_root, "wds", name, members)
        labelled += len(members)
        bar.update(1)
    bar.close()
    out_dir = out_root / labeler.modality
    if units and labelled + len(bad):
        _log_run(out_dir, labeler, part, started, labelled=labelled, already_done_shards=already, bad_images=bad)
    return {"labelled": labelled, "skipped": already, "bad": bad, "out": out_dir}


def label_folder(in_dir: str | os.PathLike, labeler: Labeler, out_dir: str | os.PathLike | None = None,
                 batch_size: int = 16, part: tuple[int, int] = (0, 1), on_bad_image: str = "skip",
                 progress: bool = True) -> dict:
    """Label every image of ``in_dir`` (its ``part``: ``(i, n)``) without an output yet; returns
    {"labelled", "skipped", "bad", "out"}.

    The default output folder is ``<split>/<labeler.modality>`` next to the rgb folder. An image that cannot be decoded
    stops the run with its path (``on_bad_image="stop"``) or is skipped and counted (``"skip"``: listed in the run's
    record in ``<out>/.label_log.jsonl``)."""
    if on_bad_image not in BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r}: one of {', '.join(BAD_IMAGE)}")
    rgb_dir = rgb_folder(in_dir)
    out_dir = Path(out_dir) if out_dir is not None else rgb_dir.parent / labeler.modality
    images = list_images(rgb_dir)
    if not images:
        raise FileNotFoundError(f"{rgb_dir}: no images ({', '.join(IMAGE_EXTS)}) to label")
    images = part_of(images, part)

    def target(rel: Path) -> Path:
        return labeler.output_path(out_dir / rel.parent, rel.stem)

    todo = [p for p in images if not target(p).exists()]
    bad: list[str] = []
    started = time.time()
    bar = tqdm(total=len(todo), desc=f"label {labeler.name}", unit="img", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = []
        for rel in todo[start:start + batch_size]:
            try:
                chunk.append((rel, read_rgb(rgb_dir / rel)))
            except ValueError:
                if on_bad_image == "stop":
                    raise
                bad.append(str(rel))
        labels = label_in_size_groups(labeler, [(rel.stem, img) for rel, img in chunk])
        for (rel, _), label in zip(chunk, labels):
            labeler.save(target(rel), label)
        bar.update(len(todo[start:start + batch_size]))
    bar.close()
    result = {"labelled": len(todo) - len(bad), "skipped": len(images) - len(todo), "bad": bad, "out": out_dir}
    if todo:
        _log_run(out_dir, labeler, part, started, labelled=result["labelled"], already_done=result["skipped"],
                 bad_images=bad)
    return result


# which command-line options each labeller takes (the rest are refused, by name)
CLI_OPTIONS = {
    "timm_features": ("device", "model"),
    "vit_features": ("device", "model", "folder", "checkpoint"),
    "vit_global": ("device", "model", "folder", "checkpoint"),
    "clip_features": ("device", "checkpoint"),
    "t5_caption": ("device", "checkpoint"),
    "dpt_depth": ("device", "checkpoint", "image_size"),
    "dpt_normal": ("device", "checkpoint", "image_size"),
    "mask2former_semseg": ("device", "checkpoint", "image_size", "void_below"),
    "vitdet_boxes": ("device", "checkpoint", "image_size", "score_threshold"),
}


def convert_cli(argv: list[str]) -> int:
    """``fourm-bench label convert``: a pickled labeller release -> safetensors, without running code from it."""
    from fourm.data.weights import WeightsError, convert

    p = argparse.ArgumentParser(prog="fourm-bench label convert",
                                description="convert a pickled weights release (Lightning .ckpt, detectron2 .pkl, "
                                            "torch .pth) to safetensors; classes in the pickle are never run")
    p.add_argument("--in", dest="src", required=True, help="the released weights file")
    p.add_argument("--out", dest="dst", required=True, help="the .safetensors file to write (never overwritten)")
    p.add_argument("--strip", action="append", default=[], help="a key prefix to drop, e.g. model. (repeatable)")
    args = parse_cli(p, argv)
    try:
        info = convert(args.src, args.dst, strip=tuple(args.strip))
    except WeightsError as e:
        print(f"fourm-bench label convert: {e}", file=sys.stderr)
        return 2
    print(f"convert: {info['tensors']} tensors, {info['elements']:,} values -> {args.dst}")
    return 0


def check_weights(name: str, checkpoint: str | None) -> None:
    """Before any job runs: a labeller's weights against its released architecture, from the file's header alone
    (safetensors; other files are checked when loaded). A mismatch is one WeightsError naming the keys."""
    from fourm.data.weights import WeightsError, mismatch, read_shapes, strip_prefix

    if not checkpoint:
        return
    path = Path(checkpoint)
    if name == "mask2former_semseg":
        if not (path / "config.json").is_file():
            raise WeightsError(f"{path}: a mask2former_semseg checkpoint is a transformers model folder (config.json "
                               "+ model.safetensors)")
        return
    if name not in ("dpt_depth", "dpt_normal", "vitdet_boxes"):
        return
    found = read_shapes(path)
    if found is None:
        return
    if name == "vitdet_boxes":
        from fourm.data.vitdet import released_shapes
        from fourm.data.vitdet_modules import from_detectron2

        own, found, what = released_shapes(), from_detectron2(found), "ViTDet-H Cascade R-CNN (detectron2 layout)"
    else:
        from fourm.data.dpt import released_shapes

        kind = name.partition("_")[2]
        own, found, what = released_shapes(kind), strip_prefix(found, ("model.",)), f"Omnidata DPT-Hybrid {kind}"
    msg = mismatch(own, found)
    if msg:
        raise WeightsError(f"{path}: not the weights of {what}: {msg}")


def build_parser(prog: str = "fourm-bench label") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                epilog="fourm-bench label convert --in X.ckpt --out X.safetensors: convert a pickled "
                                       "weights release first (see `fourm-bench label convert --help`)")
    p.add_argument("--in", dest="in_dir", required=True,
                   help="folder of RGB images, a split folder with rgb/ (or rgb/<folder>/), or per-modality RGB shards "
                        "/data/[rgb]/shard-{00000..00099}.tar")
    p.add_argument("--labeler", required=True, help=f"one of: {', '.join(sorted(LABELERS))}")
    p.add_argument("--out", default=None, help="output folder (default: <split>/<labeler modality>; for shards the "
                                               "data root, which gets <modality>/<shard>.tar)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--part", default=None, help="i/n: label only the i-th of n contiguous ranges of the images "
                                                "(one SLURM array task's share; outputs already there are kept)")
    p.add_argument("--on-bad-image", choices=BAD_IMAGE, default="skip",
                   help="an image that cannot be decoded: skip it and count it in <out>/.label_log.jsonl, or stop")
    p.add_argument("--model", default=None, help="timm_features, vit_features, vit_global: the timm model name")
    p.add_argument("--name", dest="folder", default=None, help="vit_features, vit_global: the modality folder")
    p.add_argument("--checkpoint", default=None,
                   help="a local weights file (safetensors or a tensors-only torch file; dpt_*, vit_*, clip_features, "
                        "vitdet_boxes) or model folder (mask2former_semseg, t5_caption); none: seeded random weights")
    p.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="dpt_* (shorter side, default 384), mask2former_semseg (800), vitdet_boxes (1024)")
    p.add_argument("--score-threshold", dest="score_threshold", type=float, default=None,
                   help="vitdet_boxes: keep detections scoring at least this")
    p.add_argument("--void-below", dest="void_below", type=float, default=None,
                   help="mask2former_semseg: pixels whose best class score is below this are void (255)")
    p.add_argument("--device", default="cpu")
    return p


def labeler_options(args: argparse.Namespace) -> dict:
    """The labeller's options from parsed arguments; an option it does not take is a ValueError naming it."""
    given = {k: getattr(args, k) for k in ("model", "folder", "checkpoint", "image_size", "score_threshold",
                                            "void_below") if getattr(args, k) is not None}
    takes = CLI_OPTIONS.get(args.labeler, ())
    refused = sorted(k for k in given if k not in takes)
    if refused:
        raise ValueError(f"--{refused[0].replace('_', '-')} does not apply to {args.labeler} "
                         f"(it takes: {', '.join('--' + t.replace('_', '-') for t in takes) or 'no options'})")
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file or folder")
    return {**({"device": args.device} if "device" in takes else {}), **given}


def cli(argv: list[str]) -> int:
    if argv[:1] == ["convert"]:
        return convert_cli(argv[1:])
    args = parse_cli(build_parser(), argv)
    try:
        options = labeler_options(args)
        shards = is_shard_path(args.in_dir)
        labeler = create_labeler(args.labeler, Path(args.in_dir) if shards else rgb_folder(args.in_dir), **options)
        run = label_shards if shards else label_folder
        result = run(args.in_dir, labeler, args.out, args.batch_size, part=parse_part(args.part),
                     on_bad_image=args.on_bad_image)
    except (KeyError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"fourm-bench label: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    bad = f", {len(result['bad'])} unreadable images skipped (listed in {result['out'] / LOG_NAME})" if result["bad"] else ""
    print(f"label {labeler.name}: {result['labelled']} labelled, {result['skipped']} already done{bad} -> {result['out']}")
    return 0
