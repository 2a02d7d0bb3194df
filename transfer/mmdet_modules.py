"""The 4M encoder as an mmdet backbone (ViTDet style) and ViTDet's simple feature pyramid, registered in mmdet.

* ``FourMViTDet``: the 4M encoder on a detection-size image with window attention in most blocks and global attention
  in a few (ViTDet). Windowing is weight-free: a windowed block is the *same* block run on groups of tokens, so any
  4M checkpoint loads unchanged. Padded tokens (grid not divisible by the window) are masked out of attention.
  Output: the stride-16 map after the encoder's final norm (the norm is part of the pretrained encoder; using it keeps
  every checkpoint weight in play).
* ``FourMSimpleFPN``: stride 4 (two 2x deconvs, LayerNorm2d + GELU between), 8 (one deconv), 16 (identity), 32
  (max-pool), each then 1x1 and 3x3 convs with LayerNorm2d; extra levels by stride-2 subsampling (P6 for the RPN).
* ``FourMLayerNorm2d``: LayerNorm over channels of an NCHW map, registered as a norm layer for ConvModule
  (``norm_cfg=dict(type="FourMLayerNorm2d")``); mmdet ships LN2d only inside its projects/ folder.

Importing this module registers the three names; it needs mmdet (the mm boundary lives in transfer/ only).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.model import BaseModule
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from fourm.models.blocks import additive_mask
from transfer.adapter import adapt_encoder, build_encoder


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


def window_partition(x: torch.Tensor, grid: tuple[int, int], window: int):
    """[B, h*w, C] tokens -> ([B*nW, window**2, C] windows, boolean padding mask [B*nW, window**2] or None, padded grid)."""
    B, _, C = x.shape
    h, w = grid
    ph, pw = (-h) % window, (-w) % window
    x = x.reshape(B, h, w, C)
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    H, W = h + ph, w + pw
    x = x.reshape(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, window * window, C)
    pad = None
    if ph or pw:
        valid = torch.zeros(H, W, dtype=torch.bool, device=x.device)
        valid[:h, :w] = True
        pad = ~valid.reshape(H // window, window, W // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
        pad = pad.repeat(B, 1)  # windows are batch-major, like x
    return x, pad, (H, W)


def window_unpartition(x: torch.Tensor, grid: tuple[int, int], padded: tuple[int, int], window: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B*nW, window**2, C] -> [B, h*w, C] (padding dropped)."""
    h, w = grid
    H, W = padded
    C = x.shape[-1]
    B = x.shape[0] // ((H // window) * (W // window))
    x = x.reshape(B, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    return x[:, :h, :w].reshape(B, h * w, C)


def windowed_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Run a pre-norm transformer block with attention restricted to non-overlapping windows of the token grid."""
    if window <= 0 or (window >= grid[0] and window >= grid[1]):
        return block(x)
    xw, pad, padded = window_partition(x, grid, window)
    mask = additive_mask(pad.unsqueeze(1), xw.dtype) if pad is not None else None
    return window_unpartition(block(xw, mask), grid, padded, window)


@MMDET_MODELS.register_module(force=True)
class FourMViTDet(BaseModule):
    """4M encoder backbone: window attention except in ``global_blocks``; returns ``(stride-16 map,)``.

    ``init`` / ``model`` / ``image_size`` / ``drop_path_rate`` go to :func:`transfer.adapter.build_encoder`.
    ``window_size`` is in tokens (ViTDet-B: 14 at 1024 px); ``window_size=0`` means global attention everywhere.
    ``frozen`` keeps the encoder as loaded (no gradients, eval mode: ``protocol=linear``); ``lora`` freezes its
    weights and adds LoRA adapters (``protocol=lora``, :mod:`transfer.lora`).
    """

    def __init__(self, init: str = "random", model: str = "fm_base_12e_12d_swiglu_nobias", image_size: int = 1024,
                 drop_path_rate: float = 0.1, window_size: int = 14, global_blocks=(2, 5, 8, 11),
                 modality: str = "rgb@224", frozen: bool = False, lora: dict | None = None, init_cfg=None):
        super().__init__(init_cfg)
        self.encoder_model = build_encoder(init, model, (modality,), image_size, drop_path_rate)
        self.frozen = bool(frozen)
        adapt_encoder(self.encoder_model, self.frozen, lora)
        depth = self.encoder_model.depth
        bad = [i for i in global_blocks if not 0 <= int(i) < depth]
        if bad:
            raise ValueError(f"FourMViTDet: global_blocks {bad} out of range for an encoder of depth {depth} "
                             f"(model {model!r}, init {init!r}); use indices 0..{depth - 1}")
        self.window_size = int(window_size)
        self.global_blocks = sorted(int(i) for i in global_blocks)
        self.out_channels = self.encoder_model.dim

    def init_weights(self):
        """Nothing to do: the encoder's weights come from ``init`` at construction (mmengine would re-initialise)."""

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder_model.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        enc = self.encoder_model
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            tokens, grid = enc.embed(x)
            for i, blk in enumerate(enc.encoder):
                tokens = blk(tokens) if i in self.global_blocks else windowed_block(blk, tokens, grid, self.window_size)
            tokens = enc.encoder_norm(tokens)
        B, _, C = tokens.shape
        return (tokens.transpose(1, 2).reshape(B, C, *grid).contiguous(),)  # NCHW in memory too (see FourMLayerNorm2d)


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
