"""The quantizers of the official 4M tokenizers, at inference: the cosine-similarity codebook (lucid's
``VectorQuantize`` with ``use_cosine_sim``) and memcodes (several heads of learned keys and values).

State-dict names are the released ones (``quantize._codebook.embed``, ``quantize.codes``, ``quantize.to_k.weight``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Codebook(nn.Module):
    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.register_buffer("initted", torch.tensor([True]))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", F.normalize(torch.randn(codebook_size, dim), dim=-1))


class CosineQuantizer(nn.Module):
    """Latents ``[B, D, h, w]`` -> ids ``[B, h, w]`` by the largest cosine similarity with a codebook row; the embedding
    of an id is the *stored* row (not renormalised)."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.codebook_size = codebook_size
        self._codebook = _Codebook(codebook_size, dim)

    def scores(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, h*w, codebook]`` cosine similarities (fp32)."""
        x = F.normalize(latents.float().flatten(2).transpose(1, 2), dim=-1)
        return x @ F.normalize(self._codebook.embed.float(), dim=-1).t()

    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        B, _, h, w = latents.shape
        return self.scores(latents).argmax(-1).reshape(B, h, w)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, h, w]`` -> ``[B, D, h, w]``."""
        return self._codebook.embed[ids].permute(0, 3, 1, 2).contiguous()


class Memcodes(nn.Module):
    """``heads`` codebooks of ``codebook_size`` codes of ``dim / heads`` dims: per head the id is the argmax of the
    scaled query against ``to_k(codes)``, its embedding ``to_v(codes)[id]``; ids ``[B, heads, h, w]``."""

    def __init__(self, dim: int, codebook_size: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"memcodes: latent_dim {dim} is not divisible by num_codebooks {heads}")
        self.heads, self.codebook_size, self.head_dim = heads, codebook_size, dim // heads
        self.scale = self.head_dim ** -0.5
        self.codes = nn.Parameter(torch.randn(heads, codebook_size, self.head_dim))
        self.to_k = _HeadLinear(heads, self.head_dim)
        self.to_v = _HeadLinear(heads, self.head_dim)

    def scores(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, h*w, heads, codebook]`` logits."""
        B, D, h, w = latents.shape
        q = latents.flatten(2).transpose(1, 2).reshape(B, h * w, self.heads, self.head_dim) * self.scale
        return torch.einsum("bnhd,hcd->bnhc", q, self.to_k(self.codes))

    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        B, _, h, w = latents.shape
        return self.scores(latents).argmax(-1).permute(0, 2, 1).reshape(B, self.heads, h, w)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, heads, h, w]`` -> ``[B, heads * head_dim, h, w]`` (heads concatenated)."""
        B, H, h, w = ids.shape
        values = self.to_v(self.codes)  # [heads, codebook, head_dim]
        flat = ids.reshape(B, H, h * w)
        out = torch.stack([values[i][flat[:, i]] for i in range(H)], dim=1)  # [B, heads, h*w, head_dim]
        return out.permute(0, 1, 3, 2).reshape(B, H * self.head_dim, h, w)


class _HeadLinear(nn.Module):
    """A bias-free linear map per head: weight ``[heads, d_in, d_out]`` (einops' EinMix ``h n d -> h n c``)."""

    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(heads, dim, dim) * dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hnd,hdc->hnc", x, self.weight)
