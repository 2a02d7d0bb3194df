"""Diffusion sampling of the official DiVAE tokenizers: the noise schedule and the DDIM / DDPM steps, written out from
the formulas the official code runs (diffusers-derived schedulers with 4M's settings).

* schedule: linear betas 1e-4..0.02 over 1000 steps (fp32), rescaled to zero terminal SNR, so alpha_bar[999] = 0;
* ``ddim`` (the official training evaluation): trailing spacing ``arange(T, 0, -T // N) - 1``, eta 0, epsilon from the
  *unclamped* x0, x0 clamped to [-1, 1] (``thresholding`` with max value 1), one noise draw (x_T);
* ``ddpm`` (the released models' own pipeline): leading spacing ``arange(N) * (T // N)`` reversed, x0 clamped, the
  posterior mean plus fixed-small variance noise, a fresh draw after each step with t > 0.

Draws come from one CPU generator in that order, so a seeded decode repeats exactly.
"""
from __future__ import annotations

from typing import Callable

import torch

KINDS = ("ddim", "ddpm")


class NoiseSchedule:
    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", zero_terminal_snr: bool = True):
        if beta_schedule != "linear":
            raise ValueError(f"beta_schedule {beta_schedule!r}: this sampler knows 'linear'")
        self.T = num_train_timesteps
        betas = torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float32)
        if zero_terminal_snr:
            s = torch.cumprod(1.0 - betas, dim=0).sqrt()
            s0, sT = s[0].clone(), s[-1].clone()
            s = (s - sT) * (s0 / (s0 - sT))
            a = s ** 2
            a = torch.cat([a[0:1], a[1:] / a[:-1]])
            betas = 1 - a
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].flatten()
        while a.dim() < x0.dim():
            a = a[..., None]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


def timesteps(kind: str, steps: int, T: int = 1000) -> list[int]:
    if steps < 1 or steps > T:
        raise ValueError(f"timesteps={steps}: use 1..{T}")
    if kind == "ddim":
        return (torch.arange(T, 0, -(T // steps)) - 1).tolist()
    if kind == "ddpm":
        return (torch.arange(steps) * (T // steps)).flip(0).tolist()
    raise ValueError(f"scheduler {kind!r}: choose from {KINDS}")


def _x0_eps(out, x, a_t, prediction: str):
    if prediction == "sample":
        x0 = out
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    elif prediction == "epsilon":
        eps = out
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    else:  # v_prediction
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    return x0, eps


def sample(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple, schedule: NoiseSchedule,
           kind: str, steps: int, generator: torch.Generator | None, prediction: str = "sample",
           thresholding: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """Denoise pure noise of ``shape`` with ``model(x, t) -> prediction`` (t a 0-d int64 tensor)."""
    ts = timesteps(kind, steps, schedule.T)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    stride = schedule.T // steps
    for t in ts:
        out = model(x, torch.tensor(t, dtype=torch.int64, device=device))
        a_t, a_prev = schedule.alpha(t).to(device), schedule.alpha(t - stride).to(device)
        x0, eps = _x0_eps(out, x, a_t, prediction)
        if thresholding:
            x0 = x0.clamp(-1.0, 1.0)
        if kind == "ddim":
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        else:
            beta_t = 1 - a_t / a_prev
            mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((a_t / a_prev).sqrt() * (1 - a_prev) / (1 - a_t)) * x
            if t > 0:
                var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
                noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
                mean = mean + var.sqrt() * noise
            x = mean
    return x
