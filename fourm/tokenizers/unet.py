"""The patched UNet of the official DiVAE decoders (guided-diffusion's ``UNetModel`` on patches, conditioned by
concatenating the nearest-upsampled quantized embedding).

``x [B, C, H, W]`` is patchified to ``[B, C*p*p, H/p, W/p]``, the conditioning ``[B, D, h, w]`` nearest-upsampled to
``(H/p, W/p)`` and concatenated after it; the UNet's output is un-patchified ``(c ph pw)`` back to ``[B, C, H, W]``.
Time embedding ``[cos, sin]`` (frequencies ``exp(-ln(10000) k / half)``), GroupNorm of 32 groups in fp32, ResBlocks
that add the embedding after ``in_layers``, single-head legacy QKV attention. State-dict names are the released ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fourm.tokenizers.vq_nets import architecture


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def _norm(ch: int) -> GroupNorm32:
    return GroupNorm32(32, ch)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    pass


class Sequential(nn.Sequential):
    """Passes the time embedding to the blocks that take it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class PatchedUNet(nn.Module):
    """``forward(sample, timestep, cond)``: one denoising pass (``timestep`` 0-d or ``[B]``)."""

    def __init__(self, in_channels: int, out_channels: int, cond_channels: int, patch_size: int = 4,
                 model_channels: int = 256, num_res_blocks: int = 3, attention_resolutions=(4, 8),
                 channel_mult=(1, 2, 2, 2), num_heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.patch_size, self.out_channels, self.model_channels = patch_size, out_channels, model_channels
        unet_in = in_channels * patch_size * patch_size + cond_channels
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([Sequential(nn.Conv2d(unet_in, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(Sequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Sequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Sequential(ResBlock(ch, emb_dim, ch, dropout), AttentionBlock(ch, num_heads),
                                       ResBlock(ch, emb_dim, ch, dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Sequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels * patch_size * patch_size, 3, padding=1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        B, C, H, W = sample.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"sample size {H}x{W} is not a multiple of the UNet patch size {p}")
        nh, nw = H // p, W // p
        x = sample.reshape(B, C, nh, p, nw, p).permute(0, 1, 3, 5, 2, 4).reshape(B, C * p * p, nh, nw)
        x = torch.cat([x, F.interpolate(cond, size=(nh, nw), mode="nearest")], dim=1)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t[None] if t.dim() == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        out = self.out(h.type(x.dtype))
        c = self.out_channels
        return out.reshape(B, c, p, p, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(B, c, H, W)


def build_unet(name: str, in_channels: int, out_channels: int, cond_channels: int) -> PatchedUNet:
    if not name.startswith("unet_patched"):
        raise ValueError(f"dec_type {name!r} is not a patched UNet (unet_patched*)")
    return PatchedUNet(in_channels, out_channels, cond_channels, **architecture(name))
