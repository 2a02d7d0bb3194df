"""Reconstruction metrics per kind of modality tensor, and the trivial baselines a prediction has to beat.

One :class:`Metric` subclass per kind, registered in :data:`METRICS`; a modality names its kind in its spec
(:mod:`fourm.modalities.specs`). All metrics are accumulated over batches of modality tensors:

* depth   ``mae`` / ``rmse`` (metres), ``abs_rel``, ``delta1`` (share of pixels within 1.25x), valid pixels only
* semseg  ``pixel_acc``, ``miou`` (classes present in target or prediction), ignore_index excluded
* normal  ``angle_deg`` (mean angular error), ``within_11deg``, valid (non-zero) pixels only
* rgb     ``mae``, ``psnr`` (on [0, 1] pixels)
* edge    ``f1``, ``precision``, ``recall`` of edge pixels, ``pixel_acc``
* feature ``cosine`` (mean over positions, between the channel vectors), ``mse``
* mask    ``miou`` (mean IoU of the masks), ``pooled_iou`` (intersection over union summed over masks)

Baselines are constant predictions fitted on the training set: the mean depth, the majority class, the mean normal,
the mean colour, no edges, the whole box, the mean feature vector. For depth there is also ``image_mean``, an oracle
that predicts each image's own mean depth.
"""
from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F


class Metric(abc.ABC):
    """Accumulates one kind's reconstruction metrics over batches; ``fit_constant`` is its trivial baseline."""

    name = ""
    oracles: dict = {}  # name -> f(target batch) -> a prediction no model could make, reported beside the baseline

    def __init__(self, num_classes: int = 0, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.sums: dict[str, float] = {}
        self.count = 0

    @property
    def modality(self) -> str:
        return self.name

    def _add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.double().sum())

    @abc.abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and their targets."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics of everything added."""

    @staticmethod
    @abc.abstractmethod
    def fit_constant(train: torch.Tensor, num_classes: int = 0, ignore_index: int = 255) -> torch.Tensor:
        """The best constant prediction from training data."""


METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric kind available by its ``name``."""
    if not cls.name or cls.name in METRICS:
        raise ValueError(f"metric {cls.name!r}: needs a name not registered yet (registered: {sorted(METRICS)})")
    METRICS[cls.name] = cls
    return cls


def _metric_class(kind: str) -> type[Metric]:
    try:
        return METRICS[kind]
    except KeyError:
        raise KeyError(f"no reconstruction metrics for {kind!r}; registered metric kinds: {sorted(METRICS)} "
                       "(fourm.modalities.metrics.register_metric)") from None


def image_mean_depth(target: torch.Tensor) -> torch.Tensor:
    """Oracle baseline: every pixel gets its own image's mean valid depth."""
    valid = (target > 0).float()
    mean = (target * valid).sum((1, 2, 3), keepdim=True) / valid.sum((1, 2, 3), keepdim=True).clamp_min(1)
    return mean.expand_as(target)


@register_metric
class DepthMetric(Metric):
    name = "depth"
    oracles = {"image_mean": image_mean_depth}

    @torch.no_grad()
    def update(self, pred, target):
        valid = target > 0
        p, t = pred[valid].double(), target[valid].double()
        ratio = torch.maximum(p / t, t / p.clamp_min(1e-6))
        self._add(ae=(p - t).abs(), se=(p - t) ** 2, rel=(p - t).abs() / t, d1=(ratio < 1.25).double())
        self.count += int(valid.sum())

    def compute(self):
        n, s = max(self.count, 1), self.sums
        return {"mae": s["ae"] / n, "rmse": math.sqrt(s["se"] / n), "abs_rel": s["rel"] / n, "delta1": s["d1"] / n}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):
        return train[train > 0].double().mean().float().view(1, 1, 1)


@register_metric
class SemsegMetric(Metric):
    name = "semseg"

    def __init__(self, num_classes: int = 0, ignore_index: int = 255):
        super().__init__(num_classes, ignore_index)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    @torch.no_grad()
    def update(self, pred, target):
        t = target.long()
        valid = (t != self.ignore_index) & (t >= 0) & (t < self.num_classes)
        p, t = pred.long()[valid].clamp(0, self.num_classes - 1), t[valid]
        self._add(correct=(p == t).double())
        self.confusion += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        self.count += int(valid.sum())

    def compute(self):
        n = max(self.count, 1)
        c = self.confusion.double()
        inter = c.diag()
        union = c.sum(0) + c.sum(1) - inter
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if present.any() else 0.0
        return {"pixel_acc": self.sums.get("correct", 0.0) / n, "miou": miou}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):
        t = train.long().reshape(-1)
        t = t[(t != ignore_index) & (t >= 0) & (t < num_classes)]
        return torch.bincount(t, minlength=num_classes).argmax().view(1, 1)


@register_metric
class NormalMetric(Metric):
    name = "normal"

    @torch.no_grad()
    def update(self, pred, target):
        valid = target.abs().sum(1) > 0
        cos = F.cosine_similarity(pred.double(), target.double(), dim=1, eps=1e-8)[valid].clamp(-1, 1)
        ang = torch.rad2deg(torch.acos(cos))
        self._add(angle=ang, within=(ang < 11.25).double())
        self.count += int(valid.sum())

    def compute(self):
        n, s = max(self.count, 1), self.sums
        return {"angle_deg": s["angle"] / n, "within_11deg": s["within"] / n}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):
        valid = train.abs().sum(1, keepdim=True) > 0
        mean = (train * valid).sum((0, 2, 3)) / valid.sum().clamp_min(1)
        return F.normalize(mean, dim=0).view(3, 1, 1)


@register_metric
class RGBMetric(Metric):
    name = "rgb"

    @torch.no_grad()
    def update(self, pred, target):
        diff = pred.double() - target.double()
        self._add(ae=diff.abs(), se=diff**2)
        self.count += diff.numel()

    def compute(self):
        n, s = max(self.count, 1), self.sums
        return {"mae": s["ae"] / n, "psnr": 10 * math.log10(1.0 / max(s["se"] / n, 1e-12))}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):
        return train.mean((0, 2, 3)).view(3, 1, 1)


@register_metric
class EdgeMetric(Metric):
    name = "edge"

    @torch.no_grad()
    def update(self, pred, target):
        p, t = pred > 0.5, target > 0.5
        self._add(tp=(p & t).double(), fp=(p & ~t).double(), fn=(~p & t).double(), correct=(p == t).double())
        self.count += t.numel()

    def compute(self):
        n, s = max(self.count, 1), self.sums
        tp, fp, fn = s["tp"], s["fp"], s["fn"]
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        return {"f1": f1, "precision": precision, "recall": recall, "pixel_acc": s["correct"] / n}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):
        return torch.zeros(1, 1, 1)


@register_metric
class MaskMetric(Metric):
    name = "mask"

    @torch.no_grad()
    def update(self, pred, target):
        p, t = pred > 0.5, target > 0.5
        inter, union = (p & t).flatten(1).sum(1).double(), (p | t).flatten(1).sum(1).double()
        self._add(inter=inter, union=union, iou=inter / union.clamp_min(1))
        self.count += t.shape[0]

    def compute(self):
        n, s = max(self.count, 1), self.sums
        return {"miou": float(s.get("iou", 0.0)) / n, "pooled_iou": s["inter"] / max(s["union"], 1)}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):  # the whole box
        return torch.ones(1, 1, 1)


@register_metric
class FeatureMetric(Metric):
    name = "feature"

    @torch.no_grad()
    def update(self, pred, target):
        p, t = pred.double(), target.double()
        self._add(cos=F.cosine_similarity(p, t, dim=1, eps=1e-8), se=((p - t) ** 2).mean(1))
        self.count += t.shape[0] * t.shape[2] * t.shape[3]

    def compute(self):
        n, s = max(self.count, 1), self.sums
        return {"cosine": s["cos"] / n, "mse": s["se"] / n}

    @staticmethod
    def fit_constant(train, num_classes=0, ignore_index=255):
        return train.float().mean((0, 2, 3)).view(-1, 1, 1)


def ReconstructionMeter(kind: str, num_classes: int = 0, ignore_index: int = 255) -> Metric:  # noqa: N802 (a factory)
    """A fresh meter of a metric kind (``rgb``, ``depth``, ``normal``, ``semseg``, ``edge``, ``mask``, ``feature``)."""
    return _metric_class(kind)(num_classes, ignore_index)


def fit_constant(kind: str, train: torch.Tensor, num_classes: int = 0, ignore_index: int = 255) -> torch.Tensor:
    """The best constant prediction of a metric kind from training data."""
    return _metric_class(kind).fit_constant(train, num_classes, ignore_index)


def constant_prediction(constant: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A batch shaped like ``target`` filled with the constant."""
    shape = (target.shape[0], *constant.shape[:-2], *target.shape[-2:])
    return constant.expand(shape).to(target.dtype if target.dtype == torch.long else torch.float32)


def median_scaled(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each predicted depth map times median(target) / median(pred) over the target's valid pixels."""
    out = pred.clone()
    for i in range(pred.shape[0]):
        valid = target[i] > 0
        if valid.any():
            out[i] = pred[i] * target[i][valid].median() / pred[i][valid].median().clamp_min(1e-6)
    return out


def scale_shift_aligned(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each predicted map times s plus t, the least-squares fit to the target's valid pixels: how relative depth
    (an official tokenizer's standardised depth) is compared with metric depth."""
    out = pred.clone().float()
    for i in range(pred.shape[0]):
        valid = target[i] > 0
        if valid.sum() < 2:
            continue
        p, t = pred[i][valid].double(), target[i][valid].double()
        a = torch.stack([p, torch.ones_like(p)], dim=1)
        s, b = torch.linalg.lstsq(a, t[:, None]).solution[:, 0]
        out[i] = (pred[i].double() * s + b).clamp_min(1e-3).float()
    return out
