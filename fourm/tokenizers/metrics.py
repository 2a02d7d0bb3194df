"""Reconstruction metrics per modality, and the trivial baselines a tokenizer has to beat.

All metrics are accumulated over batches of modality tensors (see :mod:`fourm.tokenizers.vqvae`):

* depth  ``mae`` / ``rmse`` (metres), ``abs_rel``, ``delta1`` (share of pixels within 1.25x), valid pixels only
* semseg ``pixel_acc``, ``miou`` (classes present in target or prediction), ignore_index excluded
* normal ``angle_deg`` (mean angular error), ``within_11deg``, valid (non-zero) pixels only
* rgb    ``mae``, ``psnr`` (on [0, 1] pixels)
* edge   ``f1``, ``precision``, ``recall`` of edge pixels, ``pixel_acc``
* feature ``cosine`` (mean over positions, between the channel vectors), ``mse``
* mask   ``miou`` (mean IoU of the masks), ``pooled_iou`` (intersection over union summed over masks)

Baselines are constant predictions fitted on the training set: the mean depth, the majority class, the mean normal,
the mean colour, no edges, the mean feature vector. For depth there is also ``image_mean``, an oracle that predicts each image's own mean depth.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ReconstructionMeter:
    """Accumulates a modality's reconstruction metrics over batches."""

    def __init__(self, modality: str, num_classes: int = 0, ignore_index: int = 255):
        self.modality = modality  # an adapter kind (rgb, depth, normal, semseg, edge, feature)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.sums: dict[str, float] = {}
        self.count = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long) if modality == "semseg" else None

    def _add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.double().sum())

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        m = self.modality
        if m == "depth":
            valid = target > 0
            p, t = pred[valid].double(), target[valid].double()
            ratio = torch.maximum(p / t, t / p.clamp_min(1e-6))
            self._add(ae=(p - t).abs(), se=(p - t) ** 2, rel=(p - t).abs() / t, d1=(ratio < 1.25).double())
            self.count += int(valid.sum())
        elif m == "semseg":
            t = target.long()
            valid = (t != self.ignore_index) & (t >= 0) & (t < self.num_classes)
            p, t = pred.long()[valid].clamp(0, self.num_classes - 1), t[valid]
            self._add(correct=(p == t).double())
            self.confusion += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).view(
                self.num_classes, self.num_classes
            )
            self.count += int(valid.sum())
        elif m == "normal":
            valid = target.abs().sum(1) > 0
            cos = F.cosine_similarity(pred.double(), target.double(), dim=1, eps=1e-8)[valid].clamp(-1, 1)
            ang = torch.rad2deg(torch.acos(cos))
            self._add(angle=ang, within=(ang < 11.25).double())
            self.count += int(valid.sum())
        elif m == "rgb":
            diff = pred.double() - target.double()
            self._add(ae=diff.abs(), se=diff**2)
            self.count += diff.numel()
        elif m == "mask":
            p, t = pred > 0.5, target > 0.5
            inter, union = (p & t).flatten(1).sum(1).double(), (p | t).flatten(1).sum(1).double()
            self._add(inter=inter, union=union, iou=inter / union.clamp_min(1))
            self.count += t.shape[0]
        elif m == "edge":
            p, t = pred > 0.5, target > 0.5
            self._add(tp=(p & t).double(), fp=(p & ~t).double(), fn=(~p & t).double(), correct=(p == t).double())
            self.count += t.numel()
        elif m == "feature":
            p, t = pred.double(), target.double()
            self._add(cos=F.cosine_similarity(p, t, dim=1, eps=1e-8), se=((p - t) ** 2).mean(1))
            self.count += t.shape[0] * t.shape[2] * t.shape[3]
        else:
            raise KeyError(f"no reconstruction metrics for modality {m!r}")

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        s = self.sums
        m = self.modality
        if m == "depth":
            return {"mae": s["ae"] / n, "rmse": math.sqrt(s["se"] / n), "abs_rel": s["rel"] / n, "delta1": s["d1"] / n}
        if m == "semseg":
            c = self.confusion.double()
            inter = c.diag()
            union = c.sum(0) + c.sum(1) - inter
            present = union > 0
            miou = float((inter[present] / union[present]).mean()) if present.any() else 0.0
            return {"pixel_acc": s["correct"] / n, "miou": miou}
        if m == "normal":
            return {"angle_deg": s["angle"] / n, "within_11deg": s["within"] / n}
        if m == "edge":
            tp, fp, fn = s["tp"], s["fp"], s["fn"]
            precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            f1 = 2 * precision * recall / max(precision + recall, 1e-12)
            return {"f1": f1, "precision": precision, "recall": recall, "pixel_acc": s["correct"] / n}
        if m == "feature":
            return {"cosine": s["cos"] / n, "mse": s["se"] / n}
        if m == "mask":
            return {"miou": float(s.get("iou", 0.0)) / n, "pooled_iou": s["inter"] / max(s["union"], 1)}
        mse = s["se"] / n
        return {"mae": s["ae"] / n, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}


def fit_constant(modality: str, train: torch.Tensor, num_classes: int = 0, ignore_index: int = 255) -> torch.Tensor:
    """The best constant prediction from training data: mean depth / majority class / mean normal / mean colour."""
    if modality == "depth":
        return train[train > 0].double().mean().float().view(1, 1, 1)
    if modality == "semseg":
        t = train.long().reshape(-1)
        t = t[(t != ignore_index) & (t >= 0) & (t < num_classes)]
        return torch.bincount(t, minlength=num_classes).argmax().view(1, 1)
    if modality == "normal":
        valid = train.abs().sum(1, keepdim=True) > 0
        mean = (train * valid).sum((0, 2, 3)) / valid.sum().clamp_min(1)
        return F.normalize(mean, dim=0).view(3, 1, 1)
    if modality == "rgb":
        return train.mean((0, 2, 3)).view(3, 1, 1)
    if modality == "edge":
        return torch.zeros(1, 1, 1)
    if modality == "mask":  # the whole box
        return torch.ones(1, 1, 1)
    if modality == "feature":
        return train.float().mean((0, 2, 3)).view(-1, 1, 1)
    raise KeyError(f"no baseline for modality {modality!r}")


def constant_prediction(constant: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A batch shaped like ``target`` filled with the constant."""
    shape = (target.shape[0], *constant.shape[:-2], *target.shape[-2:])
    return constant.expand(shape).to(target.dtype if target.dtype == torch.long else torch.float32)


def image_mean_depth(target: torch.Tensor) -> torch.Tensor:
    """Oracle baseline: every pixel gets its own image's mean valid depth."""
    valid = (target > 0).float()
    mean = (target * valid).sum((1, 2, 3), keepdim=True) / valid.sum((1, 2, 3), keepdim=True).clamp_min(1)
    return mean.expand_as(target)
