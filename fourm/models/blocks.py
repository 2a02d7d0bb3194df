"""Transformer pieces of 4M: LayerNorm with optional bias, (gated) MLPs, SDPA attention, encoder/decoder blocks.

Parameter names follow the official 4M modules so official checkpoints load strictly.
Masks follow the official convention: a boolean ``True`` means *masked out* (not attended).
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be disabled; a disabled bias is a persistent zero buffer (as in the official files)."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer=nn.GELU, bias: bool = True, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class GatedMlp(nn.Module):
    """SwiGLU: fc2(act(fc1(x)) * fc3(x)); hidden width is 2/3 of the nominal width so parameters match a plain MLP."""

    def __init__(self, dim: int, hidden: int, act_layer=nn.SiLU, bias: bool = False, drop: float = 0.0):
        super().__init__()
        hidden = int(2 * hidden / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.fc3 = nn.Linear(dim, hidden, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x)) * self.fc3(x)))


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean 'True = masked' -> additive float mask for SDPA, shaped to broadcast over heads.

    The official code fills masked scores with -finfo.max (not -inf), so a fully masked row attends uniformly
    instead of producing NaN; adding -finfo.max reproduces that exactly.
    """
    if mask is None:
        return None
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, -torch.finfo(dtype).max)
    return out.unsqueeze(1)  # B x 1 x (1|Nq) x Nk


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias=False, proj_bias=True, qk_norm=False, norm_layer=None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if qk_norm:
            self.q_norm = norm_layer(self.head_dim)
            self.k_norm = norm_layer(self.head_dim)
        self.qk_norm = qk_norm
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias=False, proj_bias=True, qk_norm=False, norm_layer=None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        if qk_norm:
            self.q_norm = norm_layer(self.head_dim)
            self.k_norm = norm_layer(self.head_dim)
        self.qk_norm = qk_norm
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        M = context.shape[1]
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _mlp(dim, mlp_ratio, act_layer, mlp_bias, gated_mlp, drop):
    cls = GatedMlp if gated_mlp else Mlp
    return cls(dim, int(dim * mlp_ratio), act_layer=act_layer, bias=mlp_bias, drop=drop)


class Block(nn.Module):
    """Pre-norm encoder block."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, proj_bias=True, mlp_bias=True, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU, norm_layer=LayerNorm, gated_mlp=False, qk_norm=False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = _mlp(dim, mlp_ratio, act_layer, mlp_bias, gated_mlp, drop)

    def forward(self, x, mask=None):
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: self-attention (4M decoder mask), cross-attention to the encoder context, MLP."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, proj_bias=True, mlp_bias=True, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU, norm_layer=LayerNorm, gated_mlp=False, qk_norm=False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.self_attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer, attn_drop, drop)
        self.query_norm = norm_layer(dim)
        self.context_norm = norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = _mlp(dim, mlp_ratio, act_layer, mlp_bias, gated_mlp, drop)

    def forward(self, x, context, sa_mask=None, xa_mask=None):
        x = x + self.drop_path(self.self_attn(self.norm1(x), sa_mask))
        x = x + self.drop_path(self.cross_attn(self.query_norm(x), self.context_norm(context), xa_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_block(blk: nn.Module, checkpoint: bool, *args):
    """``blk(*args)``; with ``checkpoint`` (and gradients on) its activations are recomputed in backward instead of
    stored: memory for L/XL, the same numbers (the recomputation replays the random state)."""
    if checkpoint and blk.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(blk, *args, use_reentrant=False)
    return blk(*args)
