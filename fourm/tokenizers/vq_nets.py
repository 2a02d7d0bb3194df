"""The networks of the official 4M tokenizers: the ViT encoder / decoder and the bottleneck MLP, and the registry of
their named sizes (``vit_b_enc``, ``BottleneckMLP/B_6-Wi_1024``, ``unet_patched``...).

State-dict names and shapes follow the released files (``encoder.proj``, ``encoder.blocks.N.attn.qkv``,
``encoder.norm_mlp``, ``encoder.post_mlp.fc1``, ``decoder.out_proj``, ``encoder.layernorms.N``...), so they load strictly.

    register_architecture("vit_xs_enc", dim_tokens=256, depth=6, num_heads=4)       # a ViT encoder size
    register_architecture("unet_patched_s", patch_size=4, model_channels=64, num_res_blocks=1,
                          attention_resolutions=[2], channel_mult=(1, 2))             # a patched UNet size
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from fourm.models.embeddings import sincos_2d

VIT_DEFAULTS = dict(mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # the official explicit softmax path (no fused kernel): the same rounding as the released numbers
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _grid_pos_emb(h: int, w: int, dim: int) -> torch.Tensor:
    """[1, dim, h, w] 2-D sin-cos embedding, stored as a parameter (not learned) as the official ViT stores it."""
    return sincos_2d(h, w, dim).reshape(1, h, w, dim).permute(0, 3, 1, 2).contiguous()


class _ViT(nn.Module):
    """Shared by encoder and decoder: blocks, the stored sin-cos position grid and the optional post MLP."""

    def __init__(self, patch_size: int, resolution: int, dim_tokens: int, depth: int, num_heads: int, post_mlp: bool,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.patch_size, self.dim_tokens = patch_size, dim_tokens
        n = max(resolution // patch_size, 1)
        self.pos_emb = nn.Parameter(_grid_pos_emb(n, n, dim_tokens), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(dim_tokens, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth)])
        self.has_post_mlp = post_mlp
        if post_mlp:
            self.norm_mlp = nn.LayerNorm(dim_tokens, eps=norm_eps)
            self.post_mlp = Mlp(dim_tokens, int(dim_tokens * mlp_ratio), act=nn.Tanh)

    def _pos(self, nh: int, nw: int) -> torch.Tensor:
        # another grid than the stored one: the stored embedding is resampled bicubically, never recomputed
        pos = self.pos_emb
        if tuple(pos.shape[-2:]) != (nh, nw):
            pos = F.interpolate(pos, size=(nh, nw), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.has_post_mlp:
            with torch.autocast(device_type=x.device.type, enabled=False):  # fp32, as the official code runs it
                x = x.float()
                x = x + self.post_mlp(self.norm_mlp(x))
        return x


class ViTEncoder(_ViT):
    """Image (or feature map) ``[B, C, H, W]`` -> ``[B, dim, H/p, W/p]``; ``patch_proj=False`` is a 1x1 projection of a
    map that already is on the token grid (CLIP/DINOv2/ImageBind features)."""

    def __init__(self, *, in_channels: int = 3, patch_size: int = 16, resolution: int = 256, dim_tokens: int = 768,
                 depth: int = 12, num_heads: int = 12, patch_proj: bool = True, post_mlp: bool = False, **kw):
        super().__init__(patch_size, resolution, dim_tokens, depth, num_heads, post_mlp, **kw)
        k = patch_size if patch_proj else 1
        self.proj = nn.Conv2d(in_channels, dim_tokens, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        nh, nw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self._pos(nh, nw)
        x = self._trunk(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, nh, nw)


class ConvNeXtBlock(nn.Module):
    """The decoder's optional output refinement (``out_conv``): depthwise 7x7, LayerNorm, MLP, layer scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ViTDecoder(_ViT):
    """``[B, dim, nh, nw]`` -> ``[B, C, nh*p, nw*p]`` (channels outermost in each patch: ``(c ph pw)``)."""

    def __init__(self, *, out_channels: int = 3, patch_size: int = 16, resolution: int = 256, dim_tokens: int = 768,
                 depth: int = 12, num_heads: int = 12, patch_proj: bool = True, post_mlp: bool = False,
                 out_conv: bool = False, **kw):
        super().__init__(patch_size, resolution, dim_tokens, depth, num_heads, post_mlp, **kw)
        self.out_channels = out_channels
        self.p = patch_size if patch_proj else 1
        self.out_proj = nn.Linear(dim_tokens, out_channels * self.p * self.p)
        self.out_conv = nn.Sequential(ConvNeXtBlock(out_channels), ConvNeXtBlock(out_channels)) if out_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, nh, nw = x.shape
        x = x.flatten(2).transpose(1, 2) + self._pos(nh, nw)
        x = self.out_proj(self._trunk(x))
        p, c = self.p, self.out_channels
        x = x.reshape(B, nh, nw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, c, nh * p, nw * p)
        return self.out_conv(x) if self.out_conv is not None else x


class BottleneckMLP(nn.Module):
    """``linear_in``, then ``depth`` pre-norm residual blocks (Linear, GELU, Linear; LayerNorm eps 1e-5), ``linear_out``;
    applied to each position of a ``[B, C, h, w]`` map."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, width: int, expansion: int = 4):
        super().__init__()
        self.linear_in = nn.Linear(in_channels, width)
        self.layernorms = nn.ModuleList([nn.LayerNorm(width) for _ in range(depth)])
        self.blocks = nn.ModuleList([_MLPBlock(width, expansion * width) for _ in range(depth)])
        self.linear_out = nn.Linear(width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, h, w = x.shape
        y = self.linear_in(x.flatten(2).transpose(1, 2))
        for norm, block in zip(self.layernorms, self.blocks):
            y = y + block(norm(y))
        y = self.linear_out(y)
        return y.transpose(1, 2).reshape(B, -1, h, w)


class _MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.block(x)


# --- named sizes -------------------------------------------------------------------------------------------------
ARCHITECTURES: dict[str, dict] = {}
_VIT_KEYS = {"dim_tokens", "depth", "num_heads", "mlp_ratio", "qkv_bias"}
_UNET_KEYS = {"patch_size", "model_channels", "num_res_blocks", "attention_resolutions", "channel_mult", "num_heads",
              "dropout"}


def register_architecture(name: str, **sizes) -> None:
    """Register a named size: a ViT encoder (``*_enc``) or decoder (``*_dec``) with ``dim_tokens``, ``depth``,
    ``num_heads``; or a patched UNet (``unet_patched*``) with ``patch_size``, ``model_channels``, ``num_res_blocks``,
    ``attention_resolutions``, ``channel_mult`` (the official constructor argument names)."""
    if name.startswith("unet_patched"):
        allowed, need = _UNET_KEYS, {"patch_size", "model_channels", "num_res_blocks", "attention_resolutions", "channel_mult"}
    elif name.endswith(("_enc", "_dec")):
        allowed, need = _VIT_KEYS, {"dim_tokens", "depth", "num_heads"}
    else:
        raise ValueError(f"architecture {name!r}: name a ViT encoder '*_enc', a ViT decoder '*_dec' or a patched UNet "
                         "'unet_patched*' (MLPs are named by their shape: BottleneckMLP/B_<depth>-Wi_<width>)")
    unknown, missing = sorted(set(sizes) - allowed), sorted(need - set(sizes))
    if unknown or missing:
        raise ValueError(f"architecture {name!r}: unknown keys {unknown}, missing keys {missing}; keys: {sorted(allowed)}")
    ARCHITECTURES[name] = dict(sizes)


for _size, (_dim, _depth, _heads) in {"t": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}.items():
    register_architecture(f"vit_{_size}_enc", dim_tokens=_dim, depth=_depth, num_heads=_heads)
    register_architecture(f"vit_{_size}_dec", dim_tokens=_dim, depth=_depth, num_heads=_heads)
register_architecture("unet_patched", patch_size=4, model_channels=256, num_res_blocks=3, attention_resolutions=[4, 8],
                      channel_mult=(1, 2, 2, 2))

_MLP = re.compile(r"^BottleneckMLP/B_(?P<depth>\d+)-Wi_(?P<width>\d+)$")


def architecture(name: str) -> dict:
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    raise KeyError(f"unknown tokenizer architecture {name!r}; registered: {sorted(ARCHITECTURES)} and "
                   "BottleneckMLP/B_<depth>-Wi_<width> (fourm.tokenizers.register_architecture adds one)")


def mlp_shape(name: str) -> tuple[int, int] | None:
    """``BottleneckMLP/B_2-Wi_64`` -> (2 blocks, width 64); None for other names."""
    m = _MLP.match(str(name))
    return (int(m["depth"]), int(m["width"])) if m else None


def build_encoder(name: str, in_channels: int, out_dim: int | None, patch_size: int, resolution: int, patch_proj: bool,
                  post_mlp: bool) -> nn.Module:
    shape = mlp_shape(name)
    if shape is not None:
        return BottleneckMLP(in_channels, out_dim if out_dim is not None else shape[1], *shape)
    sizes = architecture(name)
    if not name.endswith("_enc"):
        raise ValueError(f"enc_type {name!r} is not an encoder (*_enc or BottleneckMLP/...)")
    return ViTEncoder(in_channels=in_channels, patch_size=patch_size, resolution=resolution, patch_proj=patch_proj,
                      post_mlp=post_mlp, **sizes)


def build_decoder(name: str, in_dim: int, out_channels: int, patch_size: int, resolution: int, patch_proj: bool,
                  post_mlp: bool, out_conv: bool) -> nn.Module:
    shape = mlp_shape(name)
    if shape is not None:
        return BottleneckMLP(in_dim, out_channels, *shape)
    sizes = architecture(name)
    if not name.endswith("_dec"):
        raise ValueError(f"dec_type {name!r} is not a ViT decoder (*_dec or BottleneckMLP/...)")
    return ViTDecoder(out_channels=out_channels, patch_size=patch_size, resolution=resolution, patch_proj=patch_proj,
                      post_mlp=post_mlp, out_conv=out_conv, **sizes)


def decoder_width(name: str) -> int:
    """The width the decoder takes in (``post_quant_proj``'s output)."""
    shape = mlp_shape(name)
    return shape[1] if shape is not None else architecture(name)["dim_tokens"]


def encoder_width(name: str) -> int:
    shape = mlp_shape(name)
    return shape[1] if shape is not None else architecture(name)["dim_tokens"]

