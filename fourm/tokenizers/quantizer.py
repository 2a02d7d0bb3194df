"""Vector quantizer with cosine-similarity lookup, as used by the 4M image tokenizers.

Encoder outputs and codebook entries are both l2-normalised, so the nearest code is the one with the highest cosine
similarity and the quantized vectors handed to the decoder are unit vectors. Gradients reach the encoder through the
straight-through estimator.

Two ways to move the codebook (``ema_decay``):

* ``ema_decay=None`` (default): a *learned* codebook. The codebook gets gradients from the codebook loss
  ``||sg(z) - e||^2``; the encoder gets the commitment loss ``beta * ||z - sg(e)||^2``.
* ``ema_decay=0.99`` (any float in (0, 1)): an *EMA* codebook. Each code moves towards the (normalised) running mean of
  the encoder outputs assigned to it; only the commitment loss is returned and the codebook gets no gradient.

Dead codes: every code remembers how many training steps ago it was last picked. Codes unused for ``restart_after``
steps are re-initialised from random encoder outputs of the current batch (the global torch RNG draws them, so a
saved RNG state makes training resumable bit-exactly). Codes start out "dead", so the first training step
initialises every code the batch does not pick from the data (``restart_after=0`` disables restarts).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    """Cosine-similarity vector quantizer over channel-first feature maps ``[B, D, H, W]``."""

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        beta: float = 0.25,
        ema_decay: float | None = None,
        restart_after: int = 50,
        eps: float = 1e-5,
    ):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be None (learned codebook) or in (0, 1), got {ema_decay}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.ema_decay = ema_decay
        self.restart_after = restart_after
        self.eps = eps

        init = F.normalize(torch.randn(codebook_size, dim), dim=-1)
        if ema_decay is None:
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", init.clone())
        # steps since each code was last chosen during training (drives restarts and usage stats); starting at
        # restart_after makes every code unused on the first training step re-initialise from encoder outputs
        self.register_buffer("idle_steps", torch.full((codebook_size,), max(restart_after, 0), dtype=torch.long))

    # --- lookup ------------------------------------------------------------------------------------
    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=-1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the most cosine-similar codes for ``z`` of shape ``[N, D]`` (any norm)."""
        z = F.normalize(z, dim=-1)
        return torch.argmax(z @ self.normalized_codebook().t(), dim=-1)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Unit code vectors for integer indices ``[B, H, W]`` -> ``[B, D, H, W]``."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"token ids must be in [0, {self.codebook_size}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        q = F.embedding(indices.long(), self.normalized_codebook())
        return q.permute(0, 3, 1, 2).contiguous()

    # --- training forward --------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Quantize ``z [B, D, H, W]``.

        Returns ``(z_q, indices [B, H, W], loss, stats)``: ``z_q`` carries straight-through gradients to ``z``;
        ``loss`` is commitment (+ codebook loss for a learned codebook); ``stats`` holds the batch perplexity and the
        fraction of codes in use.
        """
        b, d, h, w = z.shape
        if d != self.dim:
            raise ValueError(f"quantizer expects {self.dim} channels, got {d}")
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), dim=-1)
        codes = self.normalized_codebook()
        with torch.no_grad():
            indices = torch.argmax(flat @ codes.t(), dim=-1)
        q = codes[indices]

        commitment = F.mse_loss(flat, q.detach())
        if self.ema_decay is None:
            loss = F.mse_loss(q, flat.detach()) + self.beta * commitment
        else:
            loss = self.beta * commitment

        q_st = flat + (q - flat).detach()
        z_q = q_st.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()

        counts = torch.bincount(indices, minlength=self.codebook_size)
        if self.training:
            with torch.no_grad():
                if self.ema_decay is not None:
                    self._ema_update(flat.detach(), indices, counts)
                self._track_and_restart(flat.detach(), counts)

        probs = counts.float() / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        stats = {
            "perplexity": float(entropy.exp()),
            "usage": self.usage(),
            "batch_codes": int((counts > 0).sum()),
        }
        return z_q, indices.view(b, h, w), loss, stats

    def usage(self) -> float:
        """Fraction of codes picked within the last ``restart_after`` training steps."""
        return float((self.idle_steps < self.restart_after).float().mean())

    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        decay = self.ema_decay
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
        self.ema_count.mul_(decay).add_(counts.float(), alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        n = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(F.normalize(self.ema_sum / count.unsqueeze(1), dim=-1))

    def _track_and_restart(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        used = counts > 0
        self.idle_steps.add_(1)
        self.idle_steps[used] = 0
        if self.restart_after <= 0:
            return
        dead = torch.nonzero(self.idle_steps >= self.restart_after).squeeze(1)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),))
        fresh = flat[pick]
        if self.ema_decay is None:
            self.codebook.data[dead] = fresh
        else:
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        self.idle_steps[dead] = 0

    def extra_repr(self) -> str:
        kind = "learned" if self.ema_decay is None else f"ema={self.ema_decay}"
        return f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, {kind}, restart_after={self.restart_after}"


def codebook_perplexity(indices: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the token histogram: how many codes are effectively in use (1..codebook_size)."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).float()
    p = counts / counts.sum()
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))
