"""Depth and surface normals of real images from Omnidata's DPT-Hybrid (``dpt_depth``, ``dpt_normal``).

The official 4M data labels depth and normals with Omnidata v2's DPT-B-Hybrid: DPT (Ranftl et al. 2021) on timm's
``vit_base_r50_s16_384`` (ViT-B/16 over ResNet-50 stages), readout ``project``, 256 fusion features, a 1-channel
(depth) or 3-channel (normals) head with a final ReLU. The backbone is timm's; the DPT neck and head are built here with
the module names of the released checkpoints (``pretrained.model.*``, ``pretrained.act_postprocess*``, ``scratch.*``),
so Omnidata's ``omnidata_dpt_{depth,normal}_v2.ckpt`` load strictly once converted to safetensors
(``fourm-bench label convert --in X.ckpt --out X.safetensors --strip model.``; the ``model.`` prefix of the Lightning
checkpoint is also dropped on load).

Written forms (the official ones, which the official tokenizers' input transforms invert):
``depth/<stem>.png`` uint16 = round(depth * 65535) of the clamped [0, 1] relative depth; ``normal/<stem>.png`` uint8
RGB = round(n * 255) of the clamped [0, 1] normal map. Each label has its image's size.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fourm.data.labeler import Labeler, register_labeler
from fourm.data.layouts import FOURM_MODALITIES
from fourm.data.weights import load_strict, read_state_dict, strip_prefix
from fourm.modalities import codecs

FEATURES = 256                    # DPT's fusion width
STAGE_FEATURES = (256, 512, 768, 768)  # channels of the four levels fed to the fusion blocks (DPT-Hybrid)
DEPTH_INPUT_MEAN = DEPTH_INPUT_STD = 0.5  # Omnidata normalises the depth model's input; the normal model takes [0, 1]


class _Readout(nn.Module):
    """DPT's ``project`` readout: each patch token concatenated with the class token, then Linear + GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x):
        return self.project(torch.cat([x[:, 1:], x[:, :1].expand_as(x[:, 1:])], dim=-1))


class _ResidualConvUnit(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """DPT's feature fusion block: add the skip (through a residual unit), a residual unit, 2x up, 1x1 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.resConfUnit1 = _ResidualConvUnit(ch)
        self.resConfUnit2 = _ResidualConvUnit(ch)
        self.out_conv = nn.Conv2d(ch, ch, 1)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Up2(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPTHybrid(nn.Module):
    """DPT over a ViT-hybrid. ``out_channels`` 1 (depth) or 3 (normals); ``embed_dim`` / ``depth`` / ``num_heads``
    smaller than ViT-B's build a reduced model of the same structure (tests)."""

    def __init__(self, out_channels: int = 1, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 image_size: int = 384):
        super().__init__()
        import timm

        self.pretrained = nn.Module()
        # the released checkpoints keep the ImageNet classifier of the timm model: built here so they load strictly
        self.pretrained.model = timm.create_model("vit_base_r50_s16_384", pretrained=False, img_size=image_size,
                                                  embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        self.hooks = (depth * 3 // 4 - 1, depth - 1)  # blocks 8 and 11 of ViT-B
        self.pretrained.act_postprocess3 = nn.Sequential(_Readout(embed_dim), nn.Identity(), nn.Identity(),
                                                         nn.Conv2d(embed_dim, STAGE_FEATURES[2], 1))
        self.pretrained.act_postprocess4 = nn.Sequential(_Readout(embed_dim), nn.Identity(), nn.Identity(),
                                                         nn.Conv2d(embed_dim, STAGE_FEATURES[3], 1),
                                                         nn.Conv2d(STAGE_FEATURES[3], STAGE_FEATURES[3], 3, stride=2,
                                                                   padding=1))
        self.scratch = nn.Module()
        for i, ch in enumerate(STAGE_FEATURES, 1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, FEATURES, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{i}", _Fusion(FEATURES))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(FEATURES, FEATURES // 2, 3, padding=1), _Up2(), nn.Conv2d(FEATURES // 2, 32, 3, padding=1),
            nn.ReLU(), nn.Conv2d(32, out_channels, 1), nn.ReLU(), nn.Identity())

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """The position embedding resized (bilinearly, as DPT does) to a ``gh`` x ``gw`` grid."""
        pe = self.pretrained.model.pos_embed
        tok, grid = pe[:, :1], pe[0, 1:]
        old = int(math.isqrt(grid.shape[0]))
        if (gh, gw) != (old, old):
            grid = F.interpolate(grid.reshape(1, old, old, -1).permute(0, 3, 1, 2), size=(gh, gw), mode="bilinear")
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        else:
            grid = grid[None]
        return torch.cat([tok, grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, 3, H, W] (H, W multiples of 32, normalised as the model expects) -> [B, out_channels, H, W]."""
        vit = self.pretrained.model
        bb = vit.patch_embed.backbone
        h, w = x.shape[-2] // 16, x.shape[-1] // 16
        y = bb.stem(x)
        layer1 = bb.stages[0](y)
        layer2 = bb.stages[1](layer1)
        y = bb.norm(bb.stages[2](layer2))
        tokens = vit.patch_embed.proj(y).flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self._pos_embed(h, w)
        outs = []
        for i, blk in enumerate(vit.blocks):
            tokens = blk(tokens)
            if i in self.hooks:
                outs.append(tokens)
            if i == self.hooks[-1]:
                break
        levels = [layer1, layer2]
        for t, post in zip(outs, (self.pretrained.act_postprocess3, self.pretrained.act_postprocess4)):
            t = post[0](t).transpose(1, 2).unflatten(2, (h, w))
            levels.append(post[3:](t))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(lv) for i, lv in enumerate(levels, 1))
        path = s.refinenet4(l4)
        path = s.refinenet3(path, l3)
        path = s.refinenet2(path, l2)
        path = s.refinenet1(path, l1)
        return s.output_conv(path)


class DPTLabeler(Labeler):
    """Omnidata DPT-Hybrid depth (``kind="depth"``) or normals (``kind="normal"``) for each image at its own size.

    Inputs are resized (aspect kept) so the shorter side is ``image_size`` (384, Omnidata's) and both sides are
    multiples of 32; the prediction is clamped to [0, 1] (as Omnidata's demo does) and resized back to the image."""

    def __init__(self, kind: str = "depth", checkpoint: str | None = None, image_size: int = 384, seed: int = 0,
                 device: str = "cpu", **arch):
        if kind not in ("depth", "normal"):
            raise ValueError(f"kind {kind!r}: dpt labels 'depth' or 'normal'")
        torch.manual_seed(seed)  # random weights (no checkpoint) are reproducible
        self.net = DPTHybrid(out_channels=1 if kind == "depth" else 3, **arch)
        self.weights = "random (seeded)"
        if checkpoint:
            state = strip_prefix(read_state_dict(checkpoint), ("model.",))
            load_strict(self.net, state, str(checkpoint), f"Omnidata DPT-Hybrid {kind} ({self.net.scratch.output_conv[4].out_channels}-channel head)")
            self.weights = str(checkpoint)
        self.net.eval().to(device)
        self.kind, self.image_size, self.device = kind, image_size, device
        self.name, self.modality = f"dpt_{kind}", kind
        self.codec = FOURM_MODALITIES[kind]

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        scale = self.image_size / min(h, w)
        return max(32, round(h * scale / 32) * 32), max(32, round(w * scale / 32) * 32)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, C, H, W] in [0, 1]."""
        h, w = images.shape[-2:]
        x = F.interpolate(images.to(self.device), size=self.input_size(h, w), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        if self.kind == "depth":
            x = (x - DEPTH_INPUT_MEAN) / DEPTH_INPUT_STD
        y = self.net(x).clamp(0, 1)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1).cpu()

    def __call__(self, images, stems):
        y = self.predict(images)
        if self.kind == "depth":
            return [np.round(d[0].numpy().astype(np.float64) * 65535).astype(np.uint16) for d in y]
        return [np.round(n.permute(1, 2, 0).numpy().astype(np.float64) * 255).astype(np.uint8) for n in y]

    def encode(self, label) -> bytes:
        return codecs.png_bytes(label)


def released_shapes(kind: str) -> dict[str, tuple]:
    """Key -> shape of the released Omnidata DPT-Hybrid ``kind`` model (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        net = DPTHybrid(out_channels=1 if kind == "depth" else 3)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@register_labeler("dpt_depth")
def _dpt_depth(in_dir: Path, **options) -> Labeler:
    return DPTLabeler("depth", **options)


@register_labeler("dpt_normal")
def _dpt_normal(in_dir: Path, **options) -> Labeler:
    return DPTLabeler("normal", **options)
