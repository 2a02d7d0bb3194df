"""Per-modality input embeddings (encoder) and query embeddings + output heads (decoder).

Each embedding returns, for its modality, ``x`` (what the token *is*) and ``emb`` (where and which modality it is:
position + modality embedding); the model sums them after selecting tokens. Names follow the official modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[1, length, dim] 1-D sin-cos position embedding (sin half, then cos half)."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float32)
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    out = torch.einsum("n,d->nd", pos, omega)
    return torch.cat([out.sin(), out.cos()], dim=1).unsqueeze(0)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[1, h*w, dim] 2-D sin-cos position embedding (MoCo-v3 style: sin/cos of x, then sin/cos of y)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ox = torch.einsum("m,d->md", gx.flatten(), omega)
    oy = torch.einsum("m,d->md", gy.flatten(), omega)
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1).unsqueeze(0)


def resize_pos_emb(pos_emb: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a [1, h*w, D] grid embedding to another grid (other resolutions / patch counts)."""
    if tuple(grid) == tuple(new_grid):
        return pos_emb
    D = pos_emb.shape[-1]
    p = pos_emb.reshape(1, grid[0], grid[1], D).permute(0, 3, 1, 2)
    p = F.interpolate(p, size=new_grid, mode="bicubic", align_corners=False)
    return p.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)


class _Embedding(nn.Module):
    """Shared bits: dim, a learned modality embedding, a fixed position embedding buffer."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mod_emb, std=0.02)


class _GridEmbedding(_Embedding):
    """A grid of positions: a fixed 2-D sin-cos table, or (``learned_pos``, global tokens) a learned one."""

    def __init__(self, dim: int, image_size: int, patch_size: int, learned_pos: bool = False):
        super().__init__(dim)
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        if learned_pos:
            self.pos_emb = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
            nn.init.normal_(self.pos_emb, std=0.02)
        else:
            self.register_buffer("pos_emb", sincos_2d(*self.grid, dim))

    def grid_emb(self, grid: tuple[int, int]) -> torch.Tensor:
        return resize_pos_emb(self.pos_emb, self.grid, grid) + self.mod_emb


class ImageEncoderEmbedding(_GridEmbedding):
    """Raw pixels -> linear patch projection (RGB in 4M)."""

    def __init__(self, dim: int, image_size: int = 224, patch_size: int = 16, num_channels: int = 3):
        super().__init__(dim, image_size, patch_size)
        self.num_channels = num_channels
        self.proj = nn.Linear(num_channels * patch_size * patch_size, dim, bias=False)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (h w), (ph pw C)] — the official flattening order (pixels major, channels minor)."""
        B, C, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p * C)

    def forward(self, d: dict) -> dict:
        x = d["tensor"]
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        return {**d, "x": self.proj(self.patchify(x)), "emb": self.grid_emb(grid).expand(x.shape[0], -1, -1)}

    def select(self, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``emb`` of the patches at ``idx`` only (what :meth:`forward` gives there).

        ``idx`` ``[B, n]`` indexes each sample's patches; with ``rows`` (``[K]``, sample of each entry) ``idx`` is
        ``[K]`` and the results are ``[K, D]``."""
        x = d["tensor"]
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        return self.proj(self.patchify(x)[_rows(idx, rows), idx]), self.grid_emb(grid)[0][idx]


class ImageTokenEncoderEmbedding(_GridEmbedding):
    """A grid of VQ token ids -> token embeddings."""

    def __init__(self, dim: int, vocab_size: int, image_size: int = 224, patch_size: int = 16, learned_pos: bool = False):
        super().__init__(dim, image_size, patch_size, learned_pos)
        self.vocab_size = vocab_size
        self.token_emb = nn.Embedding(vocab_size, dim)

    def forward(self, d: dict) -> dict:
        ids = d["tensor"]
        grid = tuple(ids.shape[1:3]) if ids.ndim == 3 else self.grid
        ids = ids.reshape(ids.shape[0], -1)
        return {**d, "x": self.token_emb(ids), "emb": self.grid_emb(grid).expand(ids.shape[0], -1, -1)}

    def select(self, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``emb`` of the tokens at ``idx`` only (``idx`` and ``rows`` as in :meth:`ImageEncoderEmbedding.select`)."""
        ids = d["tensor"]
        grid = tuple(ids.shape[1:3]) if ids.ndim == 3 else self.grid
        return self.token_emb(ids.reshape(ids.shape[0], -1)[_rows(idx, rows), idx]), self.grid_emb(grid)[0][idx]


def _compact_ids(unused: torch.Tensor, length: int) -> torch.Tensor:
    """Each used token's index among the used tokens of its row (0 for unused ones and past ``length``)."""
    pos_id = (~unused).to(torch.int64).cumsum(dim=1) - 1
    return pos_id.masked_fill(unused | (pos_id >= length), 0)


def _compact_positions(pos_emb: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
    """Position embedding of each used token counted among the used tokens only (masked slots get 0)."""
    out = pos_emb[0][_compact_ids(unused, pos_emb.shape[1])]  # B x N x D
    return out.masked_fill(unused.unsqueeze(-1), 0.0)


def _rows(idx: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The sample index of each entry of ``idx``: ``rows`` as given, or ``[B, 1]`` (broadcast over ``[B, n]``)."""
    return rows if rows is not None else torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)


def _compact_positions_at(pos_emb: torch.Tensor, unused: torch.Tensor, idx: torch.Tensor,
                          rows: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_compact_positions` at the columns ``idx`` only (``[B, n]``, or ``[K]`` of the samples ``rows``)."""
    r = _rows(idx, rows)
    out = pos_emb[0][_compact_ids(unused, pos_emb.shape[1])[r, idx]]
    return out.masked_fill(unused[r, idx].unsqueeze(-1), 0.0)


class SequenceEncoderEmbedding(_Embedding):
    """Token sequences (caption, det): positions count the *input* tokens only (span masking compacts them)."""

    def __init__(self, dim: int, vocab_size: int, max_length: int = 256, padding_idx: int = 0, max_sincos: int = 512):
        super().__init__(dim)
        self.vocab_size = vocab_size
        self.max_length = max_length
        # The official code slices [:max_length] along the batch dim of a [1, 512, D] table, i.e. keeps all 512 rows.
        self.register_buffer("pos_emb", sincos_1d(max(max_sincos, max_length), dim))
        self.token_emb = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)

    def forward(self, d: dict) -> dict:
        return {**d, "x": self.token_emb(d["tensor"]), "emb": _compact_positions(self.pos_emb, d["input_mask"]) + self.mod_emb}

    def select(self, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``emb`` of the tokens at ``idx`` only (``idx`` and ``rows`` as in :meth:`ImageEncoderEmbedding.select`)."""
        emb = _compact_positions_at(self.pos_emb, d["input_mask"], idx, rows) + self.mod_emb[0]
        return self.token_emb(d["tensor"][_rows(idx, rows), idx]), emb


class SequenceEmbEncoderEmbedding(_Embedding):
    """A sequence of float embeddings (T5 caption embeddings) -> a biased linear projection; positions count the
    visible rows only, as for token sequences."""

    def __init__(self, dim: int, embedding_dim: int, max_length: int = 77, max_sincos: int = 512):
        super().__init__(dim)
        self.embedding_dim = embedding_dim
        self.max_length = max_length
        self.register_buffer("pos_emb", sincos_1d(max(max_sincos, max_length), dim))
        self.emb_proj = nn.Linear(embedding_dim, dim, bias=True)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.embedding_dim:
            raise ValueError(f"embedding sequence of width {x.shape[-1]}; this model projects {self.embedding_dim}-wide "
                             "embeddings (a [B, L, width] float tensor with its input_mask)")

    def forward(self, d: dict) -> dict:
        self._check(d["tensor"])
        return {**d, "x": self.emb_proj(d["tensor"]), "emb": _compact_positions(self.pos_emb, d["input_mask"]) + self.mod_emb}

    def select(self, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``emb`` of the rows at ``idx`` only (``idx`` and ``rows`` as in :meth:`ImageEncoderEmbedding.select`)."""
        self._check(d["tensor"])
        emb = _compact_positions_at(self.pos_emb, d["input_mask"], idx, rows) + self.mod_emb[0]
        return self.emb_proj(d["tensor"][_rows(idx, rows), idx]), emb


class ImageTokenDecoderEmbedding(_GridEmbedding):
    """Decoder side of a token grid: queries are mask tokens at grid positions; logits over the vocab."""

    def __init__(self, dim: int, vocab_size: int, image_size: int = 224, patch_size: int = 16, learned_pos: bool = False):
        super().__init__(dim, image_size, patch_size, learned_pos)
        self.vocab_size = vocab_size
        self.token_emb = nn.Embedding(vocab_size, dim)  # unused by the masked forward; kept for the official layout
        self.to_logits = nn.Linear(dim, vocab_size, bias=False)

    def forward_embed(self, d: dict) -> dict:
        ids = d["tensor"]
        grid = tuple(ids.shape[1:3]) if ids.ndim == 3 else self.grid
        ids = ids.reshape(ids.shape[0], -1)
        return {**d, "ids": ids, "emb": self.grid_emb(grid).expand(ids.shape[0], -1, -1)}

    def select(self, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[None, torch.Tensor]:
        """``(None, emb)`` at the query positions ``idx``: the queries themselves are the mask token."""
        ids = d["tensor"]
        grid = tuple(ids.shape[1:3]) if ids.ndim == 3 else self.grid
        return None, self.grid_emb(grid)[0][idx]

    def forward_logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.to_logits(y)


class SequenceDecoderEmbedding(_Embedding):
    """Decoder side of a sequence: teacher-forced target tokens; positions count the *target* tokens only."""

    def __init__(self, dim: int, vocab_size: int, max_length: int = 256, padding_idx: int = 0, max_sincos: int = 512):
        super().__init__(dim)
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.register_buffer("pos_emb", sincos_1d(max(max_sincos, max_length), dim))
        self.token_emb = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.to_logits = nn.Linear(dim, vocab_size, bias=False)

    def forward_embed(self, d: dict) -> dict:
        ids = d["tensor"]
        emb = _compact_positions(self.pos_emb[:, : self.max_length], d["target_mask"]) + self.mod_emb
        return {**d, "ids": ids, "x": self.token_emb(ids), "emb": emb}

    def select(self, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced ``x`` and ``emb`` at the input positions ``idx`` (0 .. L-2) only (``idx`` and ``rows`` as in
        :meth:`ImageEncoderEmbedding.select`)."""
        emb = _compact_positions_at(self.pos_emb[:, : self.max_length], d["target_mask"], idx, rows) + self.mod_emb[0]
        return self.token_emb(d["tensor"][_rows(idx, rows), idx]), emb

    def forward_logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.to_logits(y)


def init_linear_(module: nn.Module) -> None:
    """Official-style init: xavier-uniform per q/k/v block for fused projections, xavier elsewhere, zero biases."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            if name.endswith("qkv") or name.endswith(".kv") or name == "kv":
                parts = 3 if name.endswith("qkv") else 2
                bound = math.sqrt(6.0 / float(m.weight.shape[0] // parts + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
