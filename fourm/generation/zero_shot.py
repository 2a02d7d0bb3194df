"""Zero-shot depth and surface normals on standard benchmark layouts (``fourm-bench oob benchmark=nyuv2|diode``).

The model predicts depth and normals from RGB alone (as ``oob`` does on a 4M-layout split) on the images of a
benchmark, read in its own layout:

* ``nyuv2``: ``<data>/nyuv2/images/<split>/<stem>.{jpg,png}``, depth ``annotations/<split>/<stem>.png`` (uint16,
  millimetres unless ``nyuv2/meta.json`` gives another ``depth_scale``; 0 = no depth) and, where present, normals
  ``normals/<split>/<stem>.png`` (uint8 RGB = (n + 1) x 127.5; black = no normal). ``split`` defaults to ``test``.
  This is the layout the NYUv2 transfer task reads.
* ``coco``: ``<data>/coco/annotations/instances_<split>2017.json`` and ``<data>/coco/<split>2017/`` (COCO as
  released, also the layout the COCO transfer task reads): boxes from the model's ``det`` sequence, scored by class
  name (box AP, AP50); needs ``text_tokenizer=``.
* ``ade20k``: ``<data>/ade20k/images/<split>/*.jpg`` and ``annotations/<split>/*.png`` (0 = other, k = class
  k - 1; split ``validation``): semantic segmentation. COCO's semantic maps come from its panoptic annotations
  (``panoptic_<split>2017.json`` with its PNG folder; class k = the k-th category by id) when they are there.
  Classes are matched by name: ``model_classes=<json list>`` names the semseg tokenizer's class ids (``world`` for
  the synthetic world's), ``classes=<json list>`` the benchmark's when its layout has no ``meta.json``.
* ``diode``: DIODE as released, ``<data>/diode/<split>/{indoors,outdoor}/scene_*/scan_*/<name>.png`` with
  ``<name>_depth.npy`` (metres), ``<name>_depth_mask.npy`` and ``<name>_normal.npy`` (zero vectors = no normal);
  indoor and outdoor are reported separately (``depth/indoors/delta1``, ``depth/outdoor/delta1``). ``split``: ``val``.

Geometry: the largest centred square of each image, resized to the model's input; the ground truth's same square,
resized (nearest) to the tokenizer's output size. Depth alignment (``align``, in the run's identity), per image over
its valid pixels: ``median`` (scale by median(gt) / median(pred)), ``lstsq`` (least-squares scale and shift in
depth), ``lstsq_disparity`` (scale and shift fitted in inverse depth, then inverted: MiDaS's protocol for relative
predictions). Depth metrics per image: ``delta1`` (% of pixels with max(pred/gt, gt/pred) < 1.25), ``abs_rel``,
``rmse`` (metres); normals per image: mean and median angle (degrees), % within 11.25 / 22.5 / 30 degrees. A
reported value is the mean over images; every image's values are in ``per_sample.npz``, and ``.ci95`` is the
half-width of the 95% bootstrap interval over the images. Each metric also has ``.ceiling`` (the ground truth through
the same tokenizer, aligned the same way: what the tokenizer allows at best) and ``.baseline`` (one constant
depth, aligned; the mean normal of the benchmark).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

BENCHMARKS = ("nyuv2", "diode", "coco", "ade20k")
ALIGNS = ("median", "lstsq", "lstsq_disparity")
DEFAULT_SPLIT = {"nyuv2": "test", "diode": "val", "coco": "val", "ade20k": "validation"}


@dataclass
class Sample:
    name: str
    image: Path
    subset: str = ""                      # "" or DIODE's "indoors" / "outdoor"
    depth: Path | None = None
    normal: Path | None = None
    extra: dict = field(default_factory=dict)


class BenchmarkError(ValueError):
    """A benchmark folder that cannot be read; the message names the folder and the layout expected."""


# --- layouts -------------------------------------------------------------------------------------------------
def read_nyuv2(data: Path, split: str) -> list[Sample]:
    root = data / "nyuv2"
    images = root / "images" / split
    if not images.is_dir():
        raise BenchmarkError(f"nyuv2: no {images}; expected <data>/nyuv2/images/<split>/*.jpg with "
                             f"annotations/<split>/*.png (16-bit depth) beside it")
    scale = 1000.0
    if (root / "meta.json").exists():
        scale = float(json.loads((root / "meta.json").read_text()).get("depth_scale", scale))
    out = []
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        depth = root / "annotations" / split / f"{p.stem}.png"
        normal = root / "normals" / split / f"{p.stem}.png"
        out.append(Sample(p.stem, p, depth=depth if depth.exists() else None,
                          normal=normal if normal.exists() else None, extra={"depth_scale": scale}))
    return out


def read_diode(data: Path, split: str) -> list[Sample]:
    root = data / "diode" / split
    if not root.is_dir():
        raise BenchmarkError(f"diode: no {root}; expected <data>/diode/<split>/{{indoors,outdoor}}/scene_*/scan_*/"
                             f"<name>.png with <name>_depth.npy, <name>_depth_mask.npy, <name>_normal.npy")
    out = []
    for subset in ("indoors", "outdoor"):
        for p in sorted((root / subset).glob("scene_*/scan_*/*.png")):
            depth, normal = p.with_name(f"{p.stem}_depth.npy"), p.with_name(f"{p.stem}_normal.npy")
            out.append(Sample(f"{subset}/{p.parent.parent.name}/{p.parent.name}/{p.stem}", p, subset,
                              depth=depth if depth.exists() else None, normal=normal if normal.exists() else None))
    return out


def read_coco(data: Path, split: str) -> list[Sample]:
    root = data / "coco"
    ann = root / "annotations" / f"instances_{split}2017.json"
    if not ann.exists():
        raise BenchmarkError(f"coco: no {ann}; expected <data>/coco/annotations/instances_<split>2017.json and the "
                             f"images in <data>/coco/<split>2017/")
    d = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in d["categories"]}
    boxes: dict[int, list] = {}
    for a in d["annotations"]:
        if a.get("iscrowd"):
            continue  # COCO's crowd regions are not objects to find
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append((x, y, x + w, y + h, names[a["category_id"]]))
    return [Sample(Path(im["file_name"]).stem, root / f"{split}2017" / im["file_name"],
                   extra={"boxes": boxes.get(im["id"], []), "size": (im["height"], im["width"])})
            for im in sorted(d["images"], key=lambda im: im["id"])]


def square_boxes(boxes: list, height: int, width: int, size: int, min_side: float = 1.0) -> list:
    """Boxes of an image in its centred square, clipped to it and scaled to ``size`` pixels; boxes that fall outside
    (or shrink below ``min_side`` pixels) are dropped."""
    side = min(height, width)
    top, left, f = (height - side) // 2, (width - side) // 2, size / side  # the crop square() takes
    out = []
    for x0, y0, x1, y1, name in boxes:
        x0, x1 = (min(max(x - left, 0), side) * f for x in (x0, x1))
        y0, y1 = (min(max(y - top, 0), side) * f for y in (y0, y1))
        if x1 - x0 >= min_side and y1 - y0 >= min_side:
            out.append((x0, y0, x1, y1, name))
    return out


def read_ade20k(data: Path, split: str) -> list[Sample]:
    """ADE20K as released (``images/<split>/*.jpg``, ``annotations/<split>/*.png``: 0 = other, k = class k - 1)."""
    root = data / "ade20k"
    images = root / "images" / split
    if not images.is_dir():
        raise BenchmarkError(f"ade20k: no {images}; expected <data>/ade20k/images/<split>/*.jpg and "
                             f"annotations/<split>/*.png (split validation)")
    out = []
    for p in sorted(images.glob("*.jpg")):
        label = root / "annotations" / split / f"{p.stem}.png"
        if label.exists():
            out.append(Sample(p.stem, p, extra={"labels": label}))
    return out


def coco_panoptic(data: Path, split: str, found: list[Sample]) -> list[str] | None:
    """Attach each COCO image's panoptic segmentation (``panoptic_<split>2017.json`` and its PNG folder) as a
    semantic map source; returns the category names (class k = the k-th category by id), None without panoptic."""
    root = data / "coco" / "annotations"
    ann = root / f"panoptic_{split}2017.json"
    if not ann.exists():
        return None
    d = json.loads(ann.read_text())
    cats = sorted(d["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(cats)}
    by_stem = {Path(a["file_name"]).stem: a for a in d["annotations"]}
    for s in found:
        a = by_stem.get(s.name)
        if a is not None:
            s.extra["panoptic"] = (root / f"panoptic_{split}2017" / a["file_name"],
                                   {seg["id"]: index[seg["category_id"]] for seg in a["segments_info"]})
    return [c["name"] for c in cats]


def load_labels(s: Sample) -> np.ndarray:
    """Benchmark class ids ``[H, W]`` (int64), 255 where unlabelled."""
    if "panoptic" in s.extra:
        png, segments = s.extra["panoptic"]
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        out = np.full(ids.shape, 255, dtype=np.int64)
        for seg, k in segments.items():
            out[ids == seg] = k
        return out
    with Image.open(s.extra["labels"]) as im:
        raw = np.asarray(im).astype(np.int64)
    return np.where(raw == 0, 255, raw - 1)  # ADE20K: 0 is "other", k is class k - 1


READERS = {"nyuv2": read_nyuv2, "diode": read_diode, "coco": read_coco, "ade20k": read_ade20k}


def samples(benchmark: str, data: str | Path, split: str | None = None) -> list[Sample]:
    if benchmark not in READERS:
        raise BenchmarkError(f"benchmark={benchmark!r}: choose one of {list(READERS)} (or 4m for a 4M-layout split)")
    found = READERS[benchmark](Path(data), split or DEFAULT_SPLIT[benchmark])
    if not found:
        raise BenchmarkError(f"{benchmark}: no images found under {data} (split {split or DEFAULT_SPLIT[benchmark]})")
    return found


def load_depth(s: Sample) -> np.ndarray:
    """Metres, ``[H, W]``, 0 where there is no depth."""
    if s.depth.suffix == ".npy":
        d = np.load(s.depth).astype(np.float32).reshape(np.load(s.depth, mmap_mode="r").shape[:2])
        mask = s.depth.with_name(s.depth.name.replace("_depth.npy", "_depth_mask.npy"))
        if mask.exists():
            d = d * (np.load(mask).reshape(d.shape) > 0)
        return d
    with Image.open(s.depth) as im:
        return np.asarray(im).astype(np.float32) / float(s.extra.get("depth_scale", 1000.0))


def load_normal(s: Sample) -> np.ndarray:
    """Unit vectors ``[H, W, 3]``, zero where there is no normal."""
    if s.normal.suffix == ".npy":
        n = np.load(s.normal).astype(np.float32)
    else:
        with Image.open(s.normal) as im:
            raw = np.asarray(im.convert("RGB"))
        n = raw.astype(np.float32) / 127.5 - 1.0
        n[(raw == 0).all(axis=-1)] = 0.0
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 0.5, n / np.maximum(norm, 1e-6), 0.0).astype(np.float32)


def square(a: np.ndarray) -> np.ndarray:
    """The largest centred square of an ``[H, W, ...]`` array (the crop the ground truth of a 4M split gets)."""
    from fourm.tokenizers.modality_io import center_box

    top, left, h, w = center_box(*a.shape[:2])
    return a[top:top + h, left:left + w]


def load_rgb(path: Path, size: int) -> torch.Tensor:
    """The centred square of an image, resized (bicubic) to ``size``, ImageNet-normalised ``[3, size, size]``."""
    from fourm.pretrain.data import IMAGENET_MEAN, IMAGENET_STD

    with Image.open(path) as im:
        a = square(np.asarray(im.convert("RGB")))
    a = np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC))
    x = torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255.0)
    return (x - IMAGENET_MEAN[0]) / IMAGENET_STD[0]


def map_at(a: np.ndarray, size: int) -> torch.Tensor:
    """A ground-truth map's centred square, nearest-resized to ``size``: ``[C, size, size]``."""
    t = torch.from_numpy(np.ascontiguousarray(square(a)))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return F.interpolate(t[None].float(), size=(size, size), mode="nearest")[0]


# --- alignment and metrics -------------------------------------------------------------------------------------
def align_depth(pred: torch.Tensor, gt: torch.Tensor, how: str) -> torch.Tensor:
    """One predicted depth map ``[1, H, W]`` aligned to the ground truth's valid pixels (see the module docstring)."""
    from fourm.modalities.metrics import median_scaled, scale_shift_aligned

    valid = gt > 0
    if valid.sum() < 2:
        return pred
    if how == "median":
        return median_scaled(pred[None], gt[None])[0]
    if how == "lstsq":
        return scale_shift_aligned(pred[None], gt[None])[0]
    if how == "lstsq_disparity":
        p, t = pred[valid].double(), gt[valid].double()
        dp = 1.0 / p.clamp_min(1e-6)
        a = torch.stack([dp, torch.ones_like(dp)], dim=1)
        s, b = torch.linalg.lstsq(a, (1.0 / t)[:, None]).solution[:, 0]
        disparity = (1.0 / pred.double().clamp_min(1e-6)) * s + b
        return (1.0 / disparity.clamp_min(1.0 / t.max() / 10)).float()  # no depth beyond 10x the scene's farthest
    raise BenchmarkError(f"align={how!r}: choose one of {list(ALIGNS)}")


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    valid = gt > 0
    if not valid.any():
        return {"delta1": float("nan"), "abs_rel": float("nan"), "rmse": float("nan")}
    p, t = pred[valid].double().clamp_min(1e-6), gt[valid].double()
    ratio = torch.maximum(p / t, t / p)
    return {"delta1": 100.0 * float((ratio < 1.25).double().mean()), "abs_rel": float(((p - t).abs() / t).mean()),
            "rmse": float(((p - t) ** 2).mean().sqrt())}


def normal_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    from fourm.generation.oob import normal_errors

    err = normal_errors(pred[None], gt[None])
    if not err.numel():
        return {k: float("nan") for k in ("angle_mean", "angle_median", "within_11deg", "within_22deg", "within_30deg")}
    return {"angle_mean": float(err.mean()), "angle_median": float(err.median()),
            "within_11deg": 100.0 * float((err < 11.25).double().mean()),
            "within_22deg": 100.0 * float((err < 22.5).double().mean()),
            "within_30deg": 100.0 * float((err < 30).double().mean())}


# --- the evaluation ----------------------------------------------------------------------------------------------
def evaluate(gen, cfg: dict, out_dir: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """Generate depth / normals for a benchmark's images and score them (flat metrics; per-image values written
    to ``out_dir``'s ``per_sample.npz`` when given)."""
    from fourm.modalities import spec
    from fourm.per_sample import write_per_sample

    benchmark, align = cfg["benchmark"], cfg["align"]
    if align not in ALIGNS:
        raise BenchmarkError(f"align={align!r}: choose one of {list(ALIGNS)}")
    split = cfg.get("split") or DEFAULT_SPLIT[benchmark]
    if split == "val":
        split = DEFAULT_SPLIT[benchmark]  # NYUv2 calls its evaluation split test, ADE20K validation
    found = samples(benchmark, cfg["data"], split)
    found = found[: cfg.get("num")] if cfg.get("num") else found
    if benchmark in ("coco", "ade20k"):
        metrics: dict[str, float] = {"num_images": len(found)}
        names = (coco_panoptic(Path(cfg["data"]), split, found) if benchmark == "coco" else
                 benchmark_classes(Path(cfg["data"]) / "ade20k", cfg.get("classes")))
        can_segment = "tok_semseg@224" in gen.model.decoder_embeddings and gen.detok.can_decode("tok_semseg@224")
        if names is not None and can_segment:  # the class names first: nothing is generated for a config that fails
            model_class_names(cfg, int(gen.detok.tokenizers["tok_semseg@224"].config.num_classes))
        if benchmark == "coco" and "det" in gen.model.decoder_embeddings and gen.text_tokenizer is not None:
            metrics.update(evaluate_detection(gen, cfg, found, progress))
        if names is not None and can_segment:
            metrics.update(evaluate_semseg(gen, cfg, [s for s in found if "panoptic" in s.extra or "labels" in s.extra],
                                           names, out_dir, progress))
        if len(metrics) == 1:
            raise BenchmarkError(f"{benchmark}: nothing to score: the model predicts no det (with text_tokenizer=) "
                                 f"nor semseg (with tokenizers.semseg=), or the benchmark has no labels for them"
                                 + (" (COCO semseg needs panoptic_<split>2017.json)" if benchmark == "coco" else ""))
        return metrics
    model = gen.model
    targets = {t: spec(t).task for t in ("tok_depth@224", "tok_normal@224")
               if t in model.decoder_embeddings and gen.detok.can_decode(t)}
    targets = {t: k for t, k in targets.items()
               if any((s.depth if k == "depth" else s.normal) is not None for s in found)}
    if not targets:
        raise BenchmarkError(f"{benchmark}: the model predicts none of depth / normals with a tokenizer given, or the "
                             "benchmark has no ground truth for them; pass tokenizers.depth=<run> / tokenizers.normal=<run>")
    size = gen.image_size
    rows: dict[str, dict[str, list]] = {}
    subsets: list[str] = []
    bar = tqdm(total=len(found) * len(targets), desc=f"oob {benchmark}", unit="gen", disable=not progress)
    import copy

    for target, task in targets.items():
        g = copy.copy(gen)
        g.cfg = {**gen.cfg, "targets": [target]}
        vq = gen.detok.tokenizers[target]
        out_size = int(vq.config.image_size)
        todo = [s for s in found if (s.depth if task == "depth" else s.normal) is not None]
        gts = [map_at(load_depth(s) if task == "depth" else load_normal(s), out_size) for s in todo]
        constant = (torch.cat([x[x > 0] for x in gts]).mean().view(1, 1, 1) if task == "depth"
                    else F.normalize(torch.stack([x.mean(dim=(1, 2)) for x in gts]).mean(0), dim=0).view(3, 1, 1))
        for b in range(0, len(todo), cfg["batch"]):
            chunk, gt = todo[b:b + cfg["batch"]], torch.stack(gts[b:b + cfg["batch"]])
            images = torch.stack([load_rgb(s.image, size) for s in chunk])
            pred = torch.stack(g.detok.decode(target, g.generate(images, cfg["seed"] + b)[target]))
            ceiling = vq.reconstruct(gt)
            for i, s in enumerate(chunk):
                for suffix, p in (("", pred[i]), (".ceiling", ceiling[i]), (".baseline", constant.expand_as(gt[i]))):
                    p = F.interpolate(p[None].float(), size=gt.shape[-2:], mode="nearest")[0]
                    if task == "depth":
                        m = depth_metrics(align_depth(p, gt[i], align), gt[i])
                    else:
                        m = normal_metrics(p, gt[i])
                    prefix = f"{task}/{s.subset}/" if s.subset else f"{task}/"
                    for k, v in m.items():
                        rows.setdefault(f"{prefix}{k}{suffix}", {}).setdefault("values", []).append(v)
                        rows[f"{prefix}{k}{suffix}"].setdefault("names", []).append(s.name)
                if s.subset and s.subset not in subsets:
                    subsets.append(s.subset)
            bar.update(len(chunk))
    bar.close()
    metrics: dict[str, float] = {"num_images": len(found)}
    for key, r in rows.items():
        v = np.asarray(r["values"], dtype=np.float64)
        metrics[key] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    if out_dir is not None:  # one row per image of the benchmark; a metric covers the rows it was scored on
        index = {sm.name: i for i, sm in enumerate(found)}
        arrays, spec_ = {}, {}
        for key, r in rows.items():
            if "." in key.rsplit("/", 1)[-1]:
                continue  # ceilings and baselines: the headline's interval is what the tables show
            col = np.full(len(found), np.nan)
            col[[index[n] for n in r["names"]]] = r["values"]
            name = key.replace("/", "__")
            arrays[name], arrays[f"{name}__scored"] = np.nan_to_num(col), np.isfinite(col)
            spec_[key] = {"kind": "mean", "values": name, "where": f"{name}__scored"}
        if arrays:
            metrics.update(write_per_sample(out_dir, arrays, spec_))
    return metrics


def evaluate_detection(gen, cfg: dict, found: list[Sample], progress: bool = True) -> dict[str, float]:
    """COCO boxes from RGB alone: the model's ``det`` sequence decoded to boxes, scored by class name against the
    instances (crowd regions left out) in the image's centred square: ``det/ap``, ``det/ap50`` (x100) with
    ``.ceiling`` (the ground truth through the text tokenizer's coordinate bins) and ``.baseline`` (one full-image
    box of the most frequent class). AP does not split into per-image terms, so it has no ``.ci95``."""
    import collections
    import copy

    from fourm.data.text import boxes_to_text, text_to_boxes
    from fourm.generation.detokenize import sequence_text
    from fourm.generation.oob import box_ap

    size = gen.image_size
    g = copy.copy(gen)
    g.cfg = {**gen.cfg, "targets": ["det"]}
    gt = [square_boxes(s.extra["boxes"], *s.extra["size"], size) for s in found]
    pred = []
    for b in tqdm(range(0, len(found), cfg["batch"]), desc="oob coco", unit="batch", disable=not progress):
        images = torch.stack([load_rgb(s.image, size) for s in found[b:b + cfg["batch"]]])
        pred += g.detok.decode("det", g.generate(images, cfg["seed"] + b)["det"])
    tok, bins = gen.text_tokenizer, gen.detok.bins
    ceiling = [text_to_boxes(sequence_text(tok.encode(boxes_to_text(x, size, bins)).ids, tok), size, bins) for x in gt]
    counts = collections.Counter(x[4] for boxes in gt for x in boxes)
    baseline = [[(0.0, 0.0, float(size), float(size), counts.most_common(1)[0][0])] if counts else [] for _ in gt]
    metrics: dict[str, float] = {}
    for suffix, p in (("", pred), (".ceiling", ceiling), (".baseline", baseline)):
        metrics.update({f"det/{k}{suffix}": v for k, v in box_ap(gt, p, size).items()})
    return metrics


def benchmark_classes(root: Path, given: str | None) -> list[str]:
    """A benchmark's class names: ``classes=<json list file>``, else its layout's ``meta.json`` ``classes``."""
    if given:
        return list(json.loads(Path(given).read_text()))
    meta = root / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("classes"):
        return list(json.loads(meta.read_text())["classes"])
    raise BenchmarkError(f"{root.name}: its class names are needed to match the model's classes by name; pass "
                         f"classes=<a JSON file with the {root.name} class list, in label order>")


def model_class_names(cfg: dict, num_classes: int) -> list[str]:
    """The names of the semseg tokenizer's class ids: ``model_classes=<json list file>`` (``model_classes=world``:
    the synthetic world's classes)."""
    given = cfg.get("model_classes")
    if not given:
        raise BenchmarkError("semseg zero-shot matches classes by name: pass model_classes=<a JSON file listing the "
                             "semseg tokenizer's class names in id order> (model_classes=world for the world's)")
    if given == "world":
        from fourm.data.world import SEMSEG_CLASSES

        names = list(SEMSEG_CLASSES)
    else:
        names = list(json.loads(Path(given).read_text()))
    if len(names) > num_classes:
        raise BenchmarkError(f"model_classes: {len(names)} names for a tokenizer of {num_classes} classes")
    return names


def evaluate_semseg(gen, cfg: dict, found: list[Sample], names: list[str], out_dir=None,
                    progress: bool = True) -> dict[str, float]:
    """Semantic segmentation from RGB alone, scored over the benchmark classes whose name is also a class of the
    model's semseg tokenizer (``semseg/classes_matched``): the prediction is mapped to benchmark ids by name, pixels
    of unmatched benchmark classes are ignored. ``semseg/miou`` (x100) and ``pixel_acc`` with ``.ceiling`` (the labels
    through the tokenizer) and ``.baseline`` (the benchmark's most frequent matched class everywhere); per-image
    intersections and unions in ``per_sample.npz`` give ``semseg/miou.ci95``."""
    import copy

    from fourm.per_sample import write_per_sample

    vq = gen.detok.tokenizers["tok_semseg@224"]
    model_names = model_class_names(cfg, int(vq.config.num_classes))
    k = len(names)
    to_bench = torch.full((int(vq.config.num_classes),), 255, dtype=torch.long)
    to_model = torch.zeros(k + 1, dtype=torch.long)  # unmatched benchmark classes (and 255) -> model class 0
    matched = torch.zeros(k, dtype=torch.bool)
    for i, n in enumerate(names):
        if n in model_names:
            to_bench[model_names.index(n)], to_model[i], matched[i] = i, model_names.index(n), True
    if not matched.any():
        raise BenchmarkError(f"semseg: no benchmark class name is a model class name ({names[:5]}... vs "
                             f"{model_names[:5]}...); check model_classes= and classes=")
    size, out_size = gen.image_size, int(vq.config.image_size)
    g = copy.copy(gen)
    g.cfg = {**gen.cfg, "targets": ["tok_semseg@224"]}
    gts = []
    for s in found:
        lab = map_at(load_labels(s), out_size)[0].long()
        lab[(lab >= k) | ~matched[lab.clamp(0, k - 1)]] = 255  # unmatched classes are not scored
        gts.append(lab)
    counts = torch.bincount(torch.cat([x[x != 255] for x in gts]), minlength=k)
    majority = int(counts.argmax())
    inter = {sfx: np.zeros((len(found), k)) for sfx in ("", ".ceiling", ".baseline")}
    union = {sfx: np.zeros((len(found), k)) for sfx in ("", ".ceiling", ".baseline")}
    correct = {sfx: [0, 0] for sfx in ("", ".ceiling", ".baseline")}
    for b in tqdm(range(0, len(found), cfg["batch"]), desc="oob semseg", unit="batch", disable=not progress):
        gt = torch.stack(gts[b:b + cfg["batch"]])
        images = torch.stack([load_rgb(s.image, size) for s in found[b:b + cfg["batch"]]])
        pred = to_bench[torch.stack(g.detok.decode("tok_semseg@224", g.generate(images, cfg["seed"] + b)["tok_semseg@224"])).long()]
        ceiling = to_bench[vq.reconstruct(to_model[gt.clamp(max=k)]).long()]
        baseline = torch.full_like(gt, majority)
        for sfx, p in (("", pred), (".ceiling", ceiling), (".baseline", baseline)):
            p = F.interpolate(p[:, None].float(), size=gt.shape[-2:], mode="nearest")[:, 0].long()
            for i in range(len(gt)):
                valid = gt[i] != 255
                t, q = gt[i][valid], p[i][valid]
                hit = q == t
                area_t = torch.bincount(t, minlength=k)[:k]
                area_p = torch.bincount(q[q != 255], minlength=k)[:k]
                area_i = torch.bincount(t[hit], minlength=k)[:k]
                inter[sfx][b + i] = area_i.numpy()
                union[sfx][b + i] = (area_t + area_p - area_i).numpy()
                correct[sfx][0] += int(hit.sum())
                correct[sfx][1] += int(valid.sum())
    from fourm.per_sample import value

    spec_ = {"kind": "ratio", "num": "intersect", "den": "union", "scale": 100.0}
    metrics: dict[str, float] = {"semseg/classes_matched": int(matched.sum())}
    for sfx in inter:
        metrics[f"semseg/miou{sfx}"] = value({"intersect": inter[sfx], "union": union[sfx]}, spec_)
        metrics[f"semseg/pixel_acc{sfx}"] = 100.0 * correct[sfx][0] / max(correct[sfx][1], 1)
    if out_dir is not None:
        metrics.update(write_per_sample(out_dir, {"intersect": inter[""], "union": union[""]}, {"semseg/miou": spec_}))
    return metrics
