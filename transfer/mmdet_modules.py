"""The 4M encoder as an mmdet backbone (ViTDet style), registered in mmdet, beside ViTDet's neck.

* ``FourMViTDet``: the 4M encoder on a detection-size image with window attention in most blocks and global attention
  in a few (ViTDet). Windowing is weight-free: a windowed block is the *same* block run on groups of tokens, so any
  4M checkpoint loads unchanged. Padded tokens (grid not divisible by the window) are masked out of attention.
  Output: the stride-16 map after the encoder's final norm (the norm is part of the pretrained encoder; using it keeps
  every checkpoint weight in play).
* ``FourMSimpleFPN`` and ``FourMLayerNorm2d`` (ViTDet's neck and its norm) live in :mod:`fourm.data.vitdet_modules`,
  which the ViTDet box labeller shares; importing this module registers all three names (it needs mmdet).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.model import BaseModule
from torch import nn

from fourm.data.vitdet_modules import FourMLayerNorm2d, FourMSimpleFPN  # noqa: F401  (registered there)
from fourm.models.blocks import additive_mask
from transfer.adapter import adapt_encoder, build_encoder


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
