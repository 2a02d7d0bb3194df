"""The 4M-7 labellers on the synthetic world: images/s at the released size, and each output against the world's
ground truth beside a trivial baseline measured in the same run.

    fourm-bench bench labels [--images 4] [--size 256] [--labelers dpt_depth,dpt_normal,...] [--weights NAME=PATH ...]
                             [--device cpu]

Quality, per labeller: ``dpt_depth`` delta1 after a least-squares scale-and-shift fit per image (baseline: a constant
map, fitted the same way); ``dpt_normal`` mean angle (baseline: the world's mean normal); ``mask2former_semseg``
mIoU after mapping each predicted COCO class to the world class it overlaps most (the world's classes are shapes, not
COCO's; baseline: one segment per image); ``vitdet_boxes`` class-agnostic AP50 (baseline: one whole-image box).
``clip_features`` has no ground truth here: throughput only. Throughput's baseline is reading the images (decode and
convert). Without ``--weights`` the labellers have seeded random weights: their numbers only show that the plumbing
runs end to end, and the table says so; with the released weights they are the labeller's quality on the world.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

LABELERS = ("dpt_depth", "dpt_normal", "mask2former_semseg", "vitdet_boxes", "clip_features")


def _ap50(dets: list[list], gts: list[list]) -> float:
    """Class-agnostic AP at IoU 0.5 over images: ``dets`` [(image, score, box)], ``gts`` [(image, box)]."""
    import numpy as np

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    if not gts:
        return float("nan")
    taken = set()
    hits = []
    for img, _, box in sorted(dets, key=lambda d: -d[1]):
        best, which = 0.0, None
        for j, (gimg, gbox) in enumerate(gts):
            if gimg == img and j not in taken:
                v = iou(box, gbox)
                if v > best:
                    best, which = v, j
        if best >= 0.5:
            taken.add(which)
        hits.append(best >= 0.5)
    if not hits:
        return 0.0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / len(gts)
    # all-point interpolation (the VOC / COCO way): precision made monotone, summed over recall steps
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((precision * steps).sum() * 100)


def _matched_miou(preds, gts) -> float:
    """mIoU after mapping each predicted id to the ground-truth class it overlaps most (over all images)."""
    import numpy as np
    import torch

    from fourm.modalities.metrics import SemsegMetric

    p = torch.cat([torch.from_numpy(np.array(x)).long().flatten() for x in preds])
    t = torch.cat([torch.from_numpy(np.array(x)).long().flatten() for x in gts])
    k = int(t.max()) + 1
    overlap = torch.zeros(256, k, dtype=torch.long)
    overlap.index_put_((p, t), torch.ones_like(p), accumulate=True)
    mapping = overlap.argmax(1)
    m = SemsegMetric(num_classes=k)
    m.update(mapping[p], t)
    return m.compute()["miou"] * 100


def _quality(name: str, labels: dict, split: Path, stems: list[str]) -> tuple[str, float, float]:
    """(metric, labeller value, baseline value) against the world's ground truth."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fourm.data.layouts import FOURM_MODALITIES
    from fourm.modalities.metrics import DepthMetric, NormalMetric, scale_shift_aligned

    def gt(modality, stem):
        return FOURM_MODALITIES[modality].decode(FOURM_MODALITIES[modality].path(split, stem))

    if name == "dpt_depth":
        t = torch.stack([torch.from_numpy(gt("depth", s)) for s in stems])[:, None]
        p = torch.stack([torch.from_numpy(labels[s].astype(np.float32) / 65535) for s in stems])[:, None]
        ours, base = DepthMetric(), DepthMetric()
        ours.update(scale_shift_aligned(p, t), t)
        base.update(scale_shift_aligned(torch.ones_like(p) + 1e-3 * torch.rand_like(p), t), t)
        return "delta1 (%)", ours.compute()["delta1"] * 100, base.compute()["delta1"] * 100
    if name == "dpt_normal":
        t = torch.stack([torch.from_numpy(gt("normal", s)).permute(2, 0, 1) for s in stems])
        p = torch.stack([torch.from_numpy(labels[s]).permute(2, 0, 1).float() / 127.5 - 1 for s in stems])
        ours, base = NormalMetric(), NormalMetric()
        ours.update(F.normalize(p, dim=1), t)
        base.update(NormalMetric.fit_constant(t)[None].expand_as(t), t)
        return "angle (deg, lower is better)", ours.compute()["angle_deg"], base.compute()["angle_deg"]
    if name == "mask2former_semseg":
        gts = [gt("semseg", s) for s in stems]
        return ("mIoU, majority-matched (%)", _matched_miou([labels[s] for s in stems], gts),
                _matched_miou([np.zeros_like(g) for g in gts], gts))
    if name == "vitdet_boxes":
        gts = [(i, b[:4]) for i, s in enumerate(stems) for b in gt("det", s)]
        dets = [(i, inst["score"], inst["boxes"]) for i, s in enumerate(stems) for inst in labels[s]["instances"]]
        whole = []
        for i, s in enumerate(stems):
            h, w = labels[s]["image_height"], labels[s]["image_width"]
            whole.append((i, 1.0, [0, 0, w, h]))
        return "AP50, class-agnostic", _ap50(dets, gts), _ap50(whole, gts)
    return "-", float("nan"), float("nan")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fourm-bench bench labels", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="world image size")
    ap.add_argument("--labelers", default=",".join(LABELERS))
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="a labeller's released weights (else seeded random weights)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import torch

    from fourm.data import labeling, world

    weights = dict(w.split("=", 1) for w in args.weights)
    names = [n for n in args.labelers.split(",") if n]
    unknown = [n for n in names if n not in LABELERS]
    if unknown:
        print(f"fourm-bench bench labels: unknown labellers {unknown}; choose from {', '.join(LABELERS)}")
        return 2
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    try:
        world.generate(str(work), num=args.images, size=args.size, seed=0, split="train")
        split = work / "train"
        stems = sorted(p.stem for p in (split / "rgb").glob("*.png"))
        t0 = time.perf_counter()
        images = [labeling.read_rgb(split / "rgb" / f"{s}.png") for s in stems]
        read_s = (time.perf_counter() - t0) / len(stems)
        print(f"{len(stems)} world images at {args.size} px; reading one: {read_s * 1e3:.1f} ms (the baseline)")
        rows = []
        for name in names:
            opts = {"device": args.device, **({"checkpoint": weights[name]} if name in weights else {})}
            t0 = time.perf_counter()
            lab = labeling.create_labeler(name, split / "rgb", **opts)
            build = time.perf_counter() - t0
            lab(images[0][None], [stems[0]])  # warm-up
            t0 = time.perf_counter()
            labels = {s: lab(img[None], [s])[0] for s, img in zip(stems, images)}
            per = (time.perf_counter() - t0) / len(stems)
            metric, ours, base = _quality(name, labels, split, stems)
            rows.append((name, "released" if name in weights else "random", build, 1 / per, per / read_s, metric,
                         ours, base))
            print(f"  {name}: {1 / per:.3f} img/s (build {build:.1f} s)", flush=True)
        print("\n| labeller | weights | img/s | time vs reading the image | metric | labeller | baseline |")
        print("|---|---|---|---|---|---|---|")
        for name, w, _, ips, ratio, metric, ours, base in rows:
            print(f"| {name} | {w} | {ips:.3f} | {ratio:,.0f}x | {metric} | {ours:.1f} | {base:.1f} |")
        if any(r[1] == "random" for r in rows):
            print("\nrandom weights: the quality columns only show the plumbing runs end to end (labels written, read "
                  "back, scored); pass --weights NAME=PATH for the labellers' real quality")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
