"""Bounding boxes of real images from ViTDet (``vitdet_boxes``): the official 4M ``det`` labeller.

The official 4M data labels boxes with ViTDet ViT-H Cascade Mask R-CNN trained on COCO (detectron2's ViTDet
project). Here the detector is mmdet's ``CascadeRCNN`` around transformers' ``VitDetBackbone`` and ViTDet's simple
feature pyramid (:mod:`fourm.data.vitdet_modules`), built at ViT-H's size. ``checkpoint`` is detectron2's released
``model_final_*.pkl`` converted once to safetensors (``fourm-bench label convert --in model_final.pkl --out
vitdet_h.safetensors``); its keys are mapped to mmdet's on load (the mask head's are dropped: only boxes are written)
and the rest must fit exactly. Test time follows ViTDet: the longer side resized to ``image_size`` (1024) and padded
to a square, detectron2's ImageNet mean / std in RGB, per-stage scores averaged, NMS 0.5, 100 boxes at most.

Written form (the official one, what the ``det`` modality is made from): ``det/<stem>.json``
``{"image_height", "image_width", "instances": [{"boxes": [x0, y0, x1, y1], "score", "class_id", "class_name"}]}``
in pixels of the image, detections scoring at least ``score_threshold``, best first.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fourm.data.labeler import Labeler, register_labeler
from fourm.data.layouts import FOURM_MODALITIES
from fourm.data.mask2former import COCO_PANOPTIC_CLASSES
from fourm.data.weights import load_strict, read_state_dict

COCO_THING_CLASSES = COCO_PANOPTIC_CLASSES[:80]  # detectron2's contiguous COCO ids 0-79
D2_PIXEL_MEAN = (123.675, 116.28, 103.53)  # detectron2 ViTDet configs, RGB, 0-255
D2_PIXEL_STD = (58.395, 57.12, 57.375)
# Cascade stages refine boxes ever tighter: the regression targets' stds shrink per stage (detectron2's 10/20/30 box
# weights; Cai & Vasconcelos). The COCO transfer's detector shares them.
STAGE_TARGET_STDS = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
TEST_SCORE_THR = 0.05  # ViTDet's box predictors at test time; score_threshold then picks what det/ keeps


def build_detector(backbone: dict | None = None, image_size: int = 1024, score_thr: float = 0.05,
                   proposals: int = 1000):
    """ViTDet's Cascade R-CNN as an mmdet model (``backbone`` overrides build a reduced ViT)."""
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    from fourm.data import vitdet_modules

    register_all_modules(init_default_scope=False)
    cfg = vitdet_modules.cascade_rcnn(len(COCO_THING_CLASSES), {**vitdet_modules.VITDET_H, **(backbone or {})},
                                      image_size=image_size, score_thr=score_thr, proposals=proposals)
    with DefaultScope.overwrite_default_scope("mmdet"):  # mmdet's registries, whatever scope the process is in
        return MODELS.build(ConfigDict(cfg))


class ViTDetBoxes(Labeler):
    """COCO boxes of each image, at its own size. ``proposals``: RPN proposals per image at test time (ViTDet's
    1000); ``backbone``: overrides of ViT-H's size (tests build a reduced one)."""

    def __init__(self, checkpoint: str | None = None, image_size: int = 1024, score_threshold: float = 0.5,
                 seed: int = 0, device: str = "cpu", backbone: dict | None = None, proposals: int = 1000):
        from fourm.data import vitdet_modules

        torch.manual_seed(seed)
        self.net = build_detector(backbone, image_size=image_size, score_thr=min(TEST_SCORE_THR, score_threshold),
                                  proposals=proposals)
        self.weights = "random (seeded)"
        if checkpoint:
            state = vitdet_modules.from_detectron2(read_state_dict(checkpoint))
            load_strict(self.net, state, str(checkpoint), "ViTDet Cascade R-CNN (detectron2 layout, mask head dropped)")
            self.weights = str(checkpoint)
        self.net.eval().to(device)
        self.image_size, self.score_threshold, self.device = image_size, score_threshold, device
        self.mean = torch.tensor(D2_PIXEL_MEAN, device=device).view(1, 3, 1, 1) / 255
        self.std = torch.tensor(D2_PIXEL_STD, device=device).view(1, 3, 1, 1) / 255
        self.name, self.modality = "vitdet_boxes", "det"
        self.codec = FOURM_MODALITIES["det"]

    @torch.no_grad()
    def __call__(self, images, stems):
        from mmdet.structures import DetDataSample

        h, w = images.shape[-2:]
        s = self.image_size / max(h, w)
        rh, rw = max(1, round(h * s)), max(1, round(w * s))
        x = F.interpolate(images.to(self.device), size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = F.pad((x - self.mean) / self.std, (0, self.image_size - rw, 0, self.image_size - rh))
        samples = []
        for _ in range(len(x)):
            d = DetDataSample()
            d.set_metainfo(dict(img_shape=(rh, rw), ori_shape=(h, w), scale_factor=(rw / w, rh / h),
                                pad_shape=(self.image_size,) * 2, batch_input_shape=(self.image_size,) * 2))
            samples.append(d)
        results = self.net.predict(x, samples, rescale=True)
        out = []
        for r in results:
            inst = r.pred_instances
            keep = inst.scores >= self.score_threshold
            boxes, scores, labels = inst.bboxes[keep].cpu(), inst.scores[keep].cpu(), inst.labels[keep].cpu()
            order = scores.argsort(descending=True)
            out.append({"image_height": int(h), "image_width": int(w), "instances": [
                {"boxes": [round(float(v), 2) for v in boxes[i].clamp(min=0).tolist()], "score": round(float(scores[i]), 4),
                 "class_id": int(labels[i]), "class_name": COCO_THING_CLASSES[int(labels[i])]} for i in order.tolist()]})
        return out

    def encode(self, label) -> bytes:
        return (json.dumps(label) + "\n").encode()


def released_shapes() -> dict[str, tuple]:
    """Key -> shape of ViTDet-H Cascade R-CNN as built here (on the meta device: nothing allocated)."""
    with torch.device("meta"):
        net = build_detector()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@register_labeler("vitdet_boxes")
def _vitdet_boxes(in_dir: Path, **options) -> Labeler:
    return ViTDetBoxes(**options)

