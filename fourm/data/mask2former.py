"""Semantic segmentation of real images with Mask2Former Swin-B on COCO panoptic (``mask2former_semseg``).

The official 4M data labels ``semseg`` with Mask2Former (Swin-B, COCO panoptic, 133 classes). The model is
transformers' ``Mask2FormerForUniversalSegmentation``; ``checkpoint`` is a local folder of the released model as
transformers saves it (``config.json`` + weights, e.g. a copy of ``facebook/mask2former-swin-base-coco-panoptic``),
loaded with ``from_pretrained`` (safetensors, or a ``.bin`` through ``weights_only``). Without one the released
architecture is built with seeded random weights.

Written form (the official one): ``semseg/<stem>.png`` uint8, the COCO panoptic class id 0-132 in the order of
:data:`COCO_PANOPTIC_CLASSES` (80 things, then 53 stuff), 255 = void (pixels whose best class score is below
``void_below``), at the image's size. The semantic map is Mask2Former's semantic inference: per pixel, the argmax
over classes of sum_q softmax(class_q) * sigmoid(mask_q).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fourm.data.labeler import Labeler, register_labeler
from fourm.data.layouts import FOURM_MODALITIES
from fourm.data.weights import WeightsError
from fourm.modalities import codecs

COCO_PANOPTIC_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit",
    "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged", "mountain-merged",
    "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)
VOID = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Swin-B (ImageNet-22k, 384) and the COCO panoptic Mask2Former head of the release (106.9M parameters)
SWIN_B = dict(image_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12)
RELEASED = dict(num_queries=100, hidden_dim=256, encoder_layers=6, decoder_layers=10, dim_feedforward=2048)


def released_config(swin: dict | None = None, **head):
    """The transformers config of Mask2Former Swin-B COCO panoptic; ``swin`` / ``head`` overrides build a reduced one."""
    from transformers import Mask2FormerConfig, SwinConfig

    backbone = SwinConfig(**{**SWIN_B, **(swin or {})}, out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = dict(enumerate(COCO_PANOPTIC_CLASSES))
    return Mask2FormerConfig(backbone_config=backbone, num_labels=len(labels), id2label=labels,
                             label2id={v: k for k, v in labels.items()}, **{**RELEASED, **head})


def official_ids(id2label: dict) -> torch.Tensor:
    """The official semseg id of each of the model's class ids, matched by name (a checkpoint may order them its own
    way); a class not among the 133 is an error naming it."""
    names = [id2label[i] for i in sorted(id2label, key=int)]
    unknown = [n for n in names if n not in COCO_PANOPTIC_CLASSES]
    if unknown:
        raise WeightsError(f"mask2former_semseg: the checkpoint's classes {unknown[:5]} are not COCO panoptic classes; "
                           f"this labeller writes the official 133-class semseg")
    return torch.tensor([COCO_PANOPTIC_CLASSES.index(n) for n in names], dtype=torch.long)


class Mask2FormerSemseg(Labeler):
    """Per image: resize so the shorter side is ``image_size`` (800, Mask2Former's COCO test size), pad to a
    multiple of 32, semantic inference, back to the image's size, official ids."""

    def __init__(self, checkpoint: str | None = None, image_size: int = 800, void_below: float = 0.0, seed: int = 0,
                 device: str = "cpu", config=None):
        from transformers import Mask2FormerForUniversalSegmentation

        if checkpoint:
            path = Path(checkpoint)
            if not (path.is_dir() and (path / "config.json").exists()):
                raise WeightsError(f"{path}: a mask2former_semseg checkpoint is a transformers model folder "
                                   f"(config.json + model.safetensors)")
            try:
                self.net = Mask2FormerForUniversalSegmentation.from_pretrained(str(path), local_files_only=True,
                                                                               use_safetensors=None)
            except (OSError, ValueError, RuntimeError) as e:
                raise WeightsError(f"{path}: not loadable as Mask2Former ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0]})") from None
            self.weights = str(path)
        else:
            torch.manual_seed(seed)
            self.net = Mask2FormerForUniversalSegmentation(config or released_config())
            self.weights = "random (seeded)"
        self.net.eval().to(device)
        self.to_official = official_ids(self.net.config.id2label)
        self.image_size, self.void_below, self.device = image_size, void_below, device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.name, self.modality = "mask2former_semseg", "semseg"
        self.codec = FOURM_MODALITIES["semseg"]

    @torch.no_grad()
    def __call__(self, images, stems):
        h, w = images.shape[-2:]
        s = self.image_size / min(h, w)
        rh, rw = max(1, round(h * s)), max(1, round(w * s))
        x = F.interpolate(images.to(self.device), size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = F.pad((x - self.mean) / self.std, (0, (-rw) % 32, 0, (-rh) % 32))
        out = self.net(pixel_values=x)
        cls = out.class_queries_logits.softmax(-1)[..., :-1]  # drop "no object"
        masks = F.interpolate(out.masks_queries_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        scores = torch.einsum("bqc,bqhw->bchw", cls, masks[..., :rh, :rw].sigmoid())
        scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
        best, ids = scores.max(1)
        sem = self.to_official.to(ids.device)[ids]
        sem[best < self.void_below] = VOID
        return [m.cpu().numpy().astype(np.uint8) for m in sem]

    def encode(self, label) -> bytes:
        return codecs.png_bytes(np.asarray(label, dtype=np.uint8))


@register_labeler("mask2former_semseg")
def _mask2former(in_dir: Path, **options) -> Labeler:
    return Mask2FormerSemseg(**options)
