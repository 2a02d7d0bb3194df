"""ViTDet's detector as mmdet modules: the plain ViT backbone (transformers' ``VitDetBackbone``), the simple feature
pyramid and its channel LayerNorm, the Cascade R-CNN around them, and the key map of detectron2's released ViTDet
checkpoints onto it.

* ``FourMLayerNorm2d``: LayerNorm over channels of an NCHW map, registered as a norm layer for ConvModule
  (``norm_cfg=dict(type="FourMLayerNorm2d")``); mmdet ships LN2d only inside its projects/ folder.
* ``FourMSimpleFPN``: stride 4 (two 2x deconvs, LayerNorm2d + GELU between), 8 (one deconv), 16 (identity), 32
  (max-pool), each then 1x1 and 3x3 convs with LayerNorm2d; extra levels by stride-2 subsampling (P6 for the RPN).
* ``FourMHFViTDet``: the ViTDet ViT (window attention with relative positions, a few global blocks, absolute
  positions of a 224-px pretraining resized bicubically), as implemented by transformers.

Importing this module registers them; it needs mmdet and is imported only where a detector is built.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.model import BaseModule
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from fourm.data.vitdet import STAGE_TARGET_STDS


@ROOT_MODELS.register_module(force=True)
class FourMLayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of [B, C, H, W] (ViTDet's LN for conv features)."""

    _abbr_ = "ln"

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        # contiguous NCHW, not a permuted view: mmcv's compiled ops (RoIAlign) read the raw buffer as NCHW and return
        # scrambled features for a channels-last-strided map, silently (the neck's outputs end in this norm)
        return x.permute(0, 3, 1, 2).contiguous()


@MMDET_MODELS.register_module(force=True)
class FourMSimpleFPN(BaseModule):
    """ViTDet's simple feature pyramid from the last (stride-16) backbone map; ``num_outs`` levels, finest first."""

    def __init__(self, in_channels: int, out_channels: int = 256, scales=(4.0, 2.0, 1.0, 0.5), num_outs: int = 5,
                 norm_cfg: dict | None = None, init_cfg=None):
        super().__init__(init_cfg)
        norm_cfg = dict(norm_cfg or dict(type="FourMLayerNorm2d", eps=1e-6))
        if num_outs < len(scales):
            raise ValueError(f"FourMSimpleFPN: num_outs={num_outs} < {len(scales)} scales {list(scales)}")
        c = in_channels
        self.scales = [float(s) for s in scales]
        self.num_outs = num_outs
        self.stages = nn.ModuleList()
        for s in self.scales:
            if s == 4.0:
                resample = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2), FourMLayerNorm2d(c // 2), nn.GELU(),
                                         nn.ConvTranspose2d(c // 2, c // 4, 2, 2))
                ch = c // 4
            elif s == 2.0:
                resample, ch = nn.ConvTranspose2d(c, c // 2, 2, 2), c // 2
            elif s == 1.0:
                resample, ch = nn.Identity(), c
            elif s == 0.5:
                resample, ch = nn.MaxPool2d(2, 2), c
            else:
                raise ValueError(f"FourMSimpleFPN: scale {s} not supported; use 4.0, 2.0, 1.0, 0.5")
            self.stages.append(nn.Sequential(
                resample,
                ConvModule(ch, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None),
                ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=None)))

    def forward(self, inputs) -> tuple[torch.Tensor, ...]:
        x = inputs[-1]
        outs = [stage(x) for stage in self.stages]
        while len(outs) < self.num_outs:  # ViTDet's LastLevelMaxPool: P6 = P5 subsampled by 2
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)


@MMDET_MODELS.register_module(force=True)
class FourMHFViTDet(BaseModule):
    """transformers' ``VitDetBackbone`` as an mmdet backbone: one stride-16 map (the last block's output)."""

    def __init__(self, embed_dim: int = 1280, depth: int = 32, num_heads: int = 16, image_size: int = 1024,
                 window_size: int = 14, global_blocks=(7, 15, 23, 31), drop_path_rate: float = 0.0, init_cfg=None):
        super().__init__(init_cfg)
        from transformers import VitDetBackbone, VitDetConfig

        cfg = VitDetConfig(hidden_size=embed_dim, num_hidden_layers=depth, num_attention_heads=num_heads,
                           image_size=image_size, pretrain_image_size=224, patch_size=16, window_size=window_size,
                           window_block_indices=[i for i in range(depth) if i not in set(global_blocks)],
                           use_relative_position_embeddings=True, use_absolute_position_embeddings=True,
                           drop_path_rate=drop_path_rate, layer_norm_eps=1e-6, out_features=[f"stage{depth}"])
        self.net = VitDetBackbone(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.net(x).feature_maps[-1].contiguous(),)


# ViTDet-H (detectron2 projects/ViTDet, COCO Cascade Mask R-CNN): ViT-H/16 at 1024 px, windows of 14, global 7/15/23/31
VITDET_H = dict(embed_dim=1280, depth=32, num_heads=16, window_size=14, global_blocks=(7, 15, 23, 31))


def cascade_rcnn(num_classes: int, backbone: dict, image_size: int = 1024, score_thr: float = 0.05,
                 max_per_img: int = 100, channels: int = 256, proposals: int = 1000) -> dict:
    """The mmdet config of ViTDet's Cascade R-CNN box detector at test time (the mask head is not built: the labeller
    writes boxes): simple FPN (P2-P6), 2-conv RPN, 4-conv + 1-fc LayerNorm box heads, class-agnostic regression."""
    strides = [4, 8, 16, 32, 64]
    norm = dict(type="FourMLayerNorm2d", eps=1e-6)
    bbox_heads = [dict(type="Shared4Conv1FCBBoxHead", in_channels=channels, conv_out_channels=channels,
                       fc_out_channels=1024, roi_feat_size=7, num_classes=num_classes, norm_cfg=norm,
                       reg_class_agnostic=True,
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds),
                       loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                       loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)) for stds in STAGE_TARGET_STDS]
    return dict(
        type="CascadeRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[0.0] * 3, std=[1.0] * 3, pad_size_divisor=1),
        backbone=dict(type="FourMHFViTDet", image_size=image_size, **backbone),
        neck=dict(type="FourMSimpleFPN", in_channels=backbone["embed_dim"], out_channels=channels,
                  scales=[4.0, 2.0, 1.0, 0.5], num_outs=5, norm_cfg=norm),
        rpn_head=dict(type="RPNHead", in_channels=channels, feat_channels=channels, num_convs=2,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=strides),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(type="CascadeRoIHead", num_stages=3, stage_loss_weights=[1.0, 0.5, 0.25],
                      bbox_roi_extractor=dict(type="SingleRoIExtractor", out_channels=channels,
                                              featmap_strides=strides[:4],
                                              roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
                      bbox_head=bbox_heads),
        test_cfg=dict(rpn=dict(nms_pre=proposals, max_per_img=proposals, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
                      rcnn=dict(score_thr=score_thr, nms=dict(type="nms", iou_threshold=0.5), max_per_img=max_per_img)),
    )


# detectron2 ViTDet key -> this model's key (regex, replacement), applied in order; the mask head is dropped
_D2_RULES = [
    (r"^backbone\.net\.patch_embed\.proj\.", "backbone.net.embeddings.projection."),
    (r"^backbone\.net\.pos_embed$", "backbone.net.embeddings.position_embeddings"),
    (r"^backbone\.net\.blocks\.(\d+)\.attn\.", r"backbone.net.encoder.layer.\1.attention."),
    (r"^backbone\.net\.blocks\.(\d+)\.", r"backbone.net.encoder.layer.\1."),
    # simple feature pyramid: simfp_2 (x4), simfp_3 (x2), simfp_4 (x1), simfp_5 (x1/2)
    (r"^backbone\.simfp_2\.([013])\.", r"neck.stages.0.0.\1."),
    (r"^backbone\.simfp_2\.4\.norm\.", "neck.stages.0.1.ln."), (r"^backbone\.simfp_2\.4\.", "neck.stages.0.1.conv."),
    (r"^backbone\.simfp_2\.5\.norm\.", "neck.stages.0.2.ln."), (r"^backbone\.simfp_2\.5\.", "neck.stages.0.2.conv."),
    (r"^backbone\.simfp_3\.0\.", "neck.stages.1.0."),
    (r"^backbone\.simfp_3\.1\.norm\.", "neck.stages.1.1.ln."), (r"^backbone\.simfp_3\.1\.", "neck.stages.1.1.conv."),
    (r"^backbone\.simfp_3\.2\.norm\.", "neck.stages.1.2.ln."), (r"^backbone\.simfp_3\.2\.", "neck.stages.1.2.conv."),
    (r"^backbone\.simfp_4\.0\.norm\.", "neck.stages.2.1.ln."), (r"^backbone\.simfp_4\.0\.", "neck.stages.2.1.conv."),
    (r"^backbone\.simfp_4\.1\.norm\.", "neck.stages.2.2.ln."), (r"^backbone\.simfp_4\.1\.", "neck.stages.2.2.conv."),
    (r"^backbone\.simfp_5\.1\.norm\.", "neck.stages.3.1.ln."), (r"^backbone\.simfp_5\.1\.", "neck.stages.3.1.conv."),
    (r"^backbone\.simfp_5\.2\.norm\.", "neck.stages.3.2.ln."), (r"^backbone\.simfp_5\.2\.", "neck.stages.3.2.conv."),
    (r"^proposal_generator\.rpn_head\.conv\.conv(\d)\.", r"rpn_head.rpn_conv.\1.conv."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn_head.rpn_cls."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn_head.rpn_reg."),
    (r"^roi_heads\.box_head\.(\d)\.conv(\d)\.norm\.", lambda m: f"roi_head.bbox_head.{m[1]}.shared_convs.{int(m[2]) - 1}.ln."),
    (r"^roi_heads\.box_head\.(\d)\.conv(\d)\.", lambda m: f"roi_head.bbox_head.{m[1]}.shared_convs.{int(m[2]) - 1}.conv."),
    (r"^roi_heads\.box_head\.(\d)\.fc1\.", r"roi_head.bbox_head.\1.shared_fcs.0."),
    (r"^roi_heads\.box_predictor\.(\d)\.cls_score\.", r"roi_head.bbox_head.\1.fc_cls."),
    (r"^roi_heads\.box_predictor\.(\d)\.bbox_pred\.", r"roi_head.bbox_head.\1.fc_reg."),
]
D2_DROPPED = ("roi_heads.mask_head.", "pixel_mean", "pixel_std")


def from_detectron2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detectron2 ViTDet (Cascade Mask R-CNN) state dict in this model's names; keys that match no rule are kept
    as they are, so a strict load names them."""
    out = {}
    for key, value in state.items():
        if key.startswith(D2_DROPPED):
            continue
        new = key
        for pattern, repl in _D2_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value
    return out
