"""An MLP VQ-VAE for vectors: global embeddings (DINOv2/ImageBind/CLIP ``*_global``, 16 tokens each, as 4M-21's
``tok_dinov2_global``) and human-pose parameters.

The encoder maps a vector to ``num_tokens`` codes of ``code_dim`` (one linear head per token position after a
shared MLP); the quantizer is the spatial tokenizers' :class:`~fourm.tokenizers.quantizer.VectorQuantizer`; the
decoder maps the concatenated codes back. The loss is MSE + (1 - cosine) on the vectors, standardised with the
training set's mean and std (stored in the model), so that vectors of any scale train alike.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fourm.tokenizers.quantizer import VectorQuantizer


@dataclasses.dataclass
class MLPVQVAEConfig:
    dim: int = 384  # the vector's size
    num_tokens: int = 16
    hidden: int = 512
    depth: int = 2
    code_dim: int = 32
    codebook_size: int = 256
    beta: float = 0.25
    restart_after: int = 50
    modality: str = "dinov2_global"  # the folder of vectors it reads (fourm-bench label --labeler vit_global)
    token_modality: str = "tok_dinov2_global"

    def __post_init__(self):
        if self.dim < 1 or self.num_tokens < 1 or self.depth < 1:
            raise ValueError(f"MLPVQVAEConfig: dim, num_tokens and depth must be >= 1 (got {self.dim}, "
                             f"{self.num_tokens}, {self.depth})")


    @property
    def grid(self) -> int:
        """Side of the square its tokens are stored as (16 tokens -> 4 x 4, as the model's global-token grid)."""
        side = round(self.num_tokens ** 0.5)
        if side * side != self.num_tokens:
            raise ValueError(f"MLPVQVAEConfig.num_tokens={self.num_tokens} is not a square; 4M global tokens are 16")
        return side

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mlp(cin: int, hidden: int, cout: int, depth: int) -> nn.Sequential:
    layers, c = [], cin
    for _ in range(depth):
        layers += [nn.Linear(c, hidden), nn.LayerNorm(hidden), nn.GELU()]
        c = hidden
    return nn.Sequential(*layers, nn.Linear(c, cout))


class MLPVQVAE(nn.Module):
    """``encode``: vectors [B, dim] -> token ids [B, num_tokens]; ``decode`` inverts it."""

    def __init__(self, config: MLPVQVAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = _mlp(c.dim, c.hidden, c.num_tokens * c.code_dim, c.depth)
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, beta=c.beta, restart_after=c.restart_after)
        self.decoder = _mlp(c.num_tokens * c.code_dim, c.hidden, c.dim, c.depth)
        self.register_buffer("mean", torch.zeros(c.dim))
        self.register_buffer("std", torch.ones(c.dim))

    def fit_normalisation(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.float().mean(0))
        self.std.copy_(x.float().std(0).clamp_min(1e-6))

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder((x.float() - self.mean) / self.std)
        return z.view(len(x), self.config.code_dim, self.config.num_tokens, 1)  # the quantizer's [B, D, h, w]

    def forward(self, x: torch.Tensor) -> dict:
        z_q, tokens, q_loss, stats = self.quantizer(self._codes(x))
        out = self.decoder(z_q.flatten(1))
        target = (x.float() - self.mean) / self.std
        recon = F.mse_loss(out, target) + (1 - F.cosine_similarity(out, target, dim=1)).mean()
        return {"loss": recon + q_loss, "recon_loss": recon, "tokens": tokens.view(len(x), -1), **stats}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self._codes(x)
        b, d, n, _ = z.shape
        return self.quantizer.lookup(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, n)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.quantizer.embed(tokens.view(len(tokens), -1, 1))  # [B, D, n, 1]
        return self.decoder(z.flatten(1)) * self.std + self.mean


def fit_in_memory(model: nn.Module, data: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
                  augment=None) -> list[float]:
    """AdamW on seeded random batches of ``data`` (linear warmup over 20 steps), for tokenizers whose whole training
    set fits in memory; ``augment(x, generator)`` may transform each batch. Returns every step's loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        x = data[torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)]
        if augment is not None:
            x = augment(x, gen)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = model(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def load_vectors(split: str | os.PathLike, modality: str) -> torch.Tensor:
    """Every vector of ``<split>/<modality>/*.npy`` (e.g. ``dinov2_global``), in stem order: float [N, dim]."""
    import numpy as np

    folder = Path(split) / modality
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .npy vectors (write them with `fourm-bench label --labeler vit_global`)")
    x = np.stack([np.load(f).astype(np.float32).reshape(-1) for f in files])
    return torch.from_numpy(x)


def train_vectors(model: MLPVQVAE, train: torch.Tensor, *, steps: int = 500, batch_size: int = 64, lr: float = 2e-3,
                  seed: int = 0) -> list[float]:
    """Fit the tokenizer on vectors held in memory (seeded batches); returns the loss of every step."""
    model.fit_normalisation(train)
    return fit_in_memory(model, train, steps=steps, batch_size=batch_size, lr=lr, seed=seed)


def train_vector_folder(data: str | os.PathLike, modality: str, *, steps: int, seed: int = 0, batch_size: int = 64,
                        lr: float = 2e-3, split: str = "train", val_split: str = "val", **model) -> tuple[MLPVQVAE, dict]:
    """Fit an MLP VQ-VAE (``model``: :class:`MLPVQVAEConfig` fields) on ``<data>/<split>/<modality>/*.npy``; its
    metrics on ``<data>/<val_split>`` (when labelled) next to the training mean's."""
    train_x = load_vectors(Path(data) / split, modality)
    torch.manual_seed(seed)
    tok = MLPVQVAE(MLPVQVAEConfig(dim=train_x.shape[1], modality=modality, **model))
    losses = train_vectors(tok, train_x, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    metrics = {"train_loss": losses[-1], "steps": len(losses)}
    val = Path(data) / val_split
    if (val / modality).is_dir():
        val_x = load_vectors(val, modality)
        metrics["val"] = vector_metrics(tok.decode(tok.encode(val_x)), val_x, center=tok.mean)
        metrics["val_mean_baseline"] = vector_metrics(tok.mean.expand_as(val_x), val_x, center=tok.mean)
    return tok, metrics


@torch.no_grad()
def vector_metrics(pred: torch.Tensor, target: torch.Tensor, center: torch.Tensor | None = None) -> dict[str, float]:
    """Mean cosine similarity and MSE of reconstructed vectors; with ``center`` (the training mean) also the cosine of
    both minus it, which the mean itself scores 0 on (embeddings of one domain share a large common direction)."""
    p, t = pred.double(), target.double()
    out = {"cosine": float(F.cosine_similarity(p, t, dim=1).mean()), "mse": float(((p - t) ** 2).mean())}
    if center is not None:
        c = center.double()
        out["centered_cosine"] = float(F.cosine_similarity(p - c, t - c, dim=1, eps=1e-12).mean())
    return out
