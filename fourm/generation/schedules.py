"""Decoding schedules: how many tokens each step decodes, at which temperature and guidance scale.

Names, signatures and values follow the official 4M generation code, so a schedule built here drives the official
sampler and ours to the same tokens. ``build_chained_generation_schedules`` checks every argument against the
model's ``modality_info`` (when given) before anything runs, and says which target and argument is wrong.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from fourm.generation.modality_dicts import kind_of

SCHEMES = ("maskgit", "roar", "autoregressive")
TOKEN_SCHEDULES = ("cosine", "linear")


class ScheduleError(ValueError):
    """A generation schedule that cannot run on the given model; the message names the target and the fix."""


def cosine_schedule(num_steps: int, num_tokens: int) -> np.ndarray:
    """Tokens per step along a half cosine: few at the start and the end, most in the middle (MaskGIT)."""
    edges = [(1 - math.cos(math.pi * k / num_steps)) / 2 for k in range(num_steps + 1)]
    sched = np.array([round(num_tokens * (b - a)) for a, b in zip(edges[:-1], edges[1:])], dtype=int)
    # rounding can miss the total by a token or two: take them from (or give them to) the middle steps
    i = 0
    while sched.sum() != num_tokens:
        j = (num_steps // 2 + (i // 2) * (1 if i % 2 else -1)) % num_steps
        step = 1 if sched.sum() < num_tokens else -1
        if sched[j] + step >= 0:
            sched[j] += step
        i += 1
    return sched


def linear_schedule(num_steps: int, num_tokens: int) -> np.ndarray:
    """Tokens per step as even as integers allow, larger steps first."""
    sched = np.diff(np.linspace(0, num_tokens, num_steps + 1, dtype=int))
    return np.sort(sched)[::-1].copy()


def linear_temp_schedule(temp: float, num_tokens) -> np.ndarray:
    """Temperature proportional to the share of tokens still to decode when the step starts."""
    num_tokens = np.asarray(num_tokens)
    total = num_tokens.sum()
    before = np.concatenate([[0], np.cumsum(num_tokens)[:-1]])
    return temp * (total - before) / total


def onex_temp_schedule(max_t: float, min_t: float, token_schedule, power: float = 0.5,
                       min_linspace: float = 1, max_linspace: float = 100) -> np.ndarray:
    """Temperature falling like ``x**-power``: step ``k`` gets ``min_t + (max_t - min_t) * y[k] * left[k]``.

    ``y`` is ``x**-power`` over ``linspace(min_linspace, max_linspace, total tokens)`` rescaled to [0, 1] and ``left[k]``
    the share of tokens still masked after step ``k``, so the last step runs at ``min_t``.
    """
    token_schedule = np.asarray(token_schedule)
    total = token_schedule.sum()
    x = np.linspace(min_linspace, max_linspace, num=total)
    y = 1 / (x ** power)
    y = y - y.min()
    y = y / y.max()
    left = 1 - np.cumsum(token_schedule) / total
    return y[: len(token_schedule)] * left * (max_t - min_t) + min_t


def _temp_schedule(name: str, temp: float, token_schedule: np.ndarray, where: str) -> np.ndarray:
    if name == "constant":
        return temp * np.ones(len(token_schedule))
    if name == "linear":
        return linear_temp_schedule(temp, token_schedule)
    if name.startswith("onex"):
        parts = name.split(":")
        try:
            min_t, power = (float(f) for f in parts[1:])
        except ValueError:
            raise ScheduleError(f"{where}: temperature schedule {name!r} must read onex:{{min_t}}:{{power}}, e.g. onex:0.5:1.0") from None
        return onex_temp_schedule(max_t=temp, min_t=min_t, token_schedule=token_schedule, power=power)
    raise ScheduleError(f"{where}: unknown temperature schedule {name!r}; use constant, linear or onex:{{min_t}}:{{power}}")


def check_cfg_scale(scale, where: str):
    if isinstance(scale, (list, tuple)):
        for s in scale:
            check_cfg_scale(s, where)
        return
    if isinstance(scale, bool) or not isinstance(scale, float):
        raise ScheduleError(f"{where}: cfg scale {scale!r} ({type(scale).__name__}) must be a float; pass "
                            f"{float(scale) if isinstance(scale, int) else 1.0!r} (a list of floats weighs several conditions)")


def build_chained_generation_schedules(
    cond_domains: list[str],
    target_domains: list[str],
    tokens_per_target: list[int],
    autoregression_schemes: list[str],
    decoding_steps: list[Optional[int]],
    token_decoding_schedules: list[Optional[str]],
    temps: list[float],
    temp_schedules: list[str],
    cfg_scales: list[float],
    cfg_schedules: list[str],
    cfg_grow_conditioning: bool = False,
    modality_info: Optional[dict] = None,
) -> list[dict]:
    """One dict per decoding step, targets in order: ``target_domain, scheme, num_tokens, temperature, cfg_scale,
    cfg_cond_domains``. An autoregressive target is one step. With ``cfg_grow_conditioning`` each finished target
    joins the guided conditions of the next ones."""
    n = len(target_domains)
    lists = dict(tokens_per_target=tokens_per_target, autoregression_schemes=autoregression_schemes,
                 decoding_steps=decoding_steps, token_decoding_schedules=token_decoding_schedules, temps=temps,
                 temp_schedules=temp_schedules, cfg_scales=cfg_scales, cfg_schedules=cfg_schedules)
    short = {k: len(v) for k, v in lists.items() if len(v) != n}
    if short:
        raise ScheduleError(f"{n} target domains {target_domains} but {short}: give one entry per target")
    chained = []
    cond_domains = list(cond_domains)
    for i, target in enumerate(target_domains):
        scheme, ntoks = autoregression_schemes[i], tokens_per_target[i]
        where = f"target {target!r} (#{i})"
        if scheme not in SCHEMES:
            raise ScheduleError(f"{where}: unknown scheme {scheme!r}; use one of {SCHEMES}")
        check_cfg_scale(cfg_scales[i], where)
        if modality_info is not None:
            if target not in modality_info:
                raise ScheduleError(f"{where}: the model has no modality {target!r}; its modalities: {sorted(modality_info)}")
            kind = kind_of(modality_info[target])
            if kind == "seq" and scheme != "autoregressive":
                raise ScheduleError(f"{where}: {scheme} decodes token grids, but {target} is a sequence; "
                                    "use autoregression_schemes='autoregressive' for it")
            if kind == "img" and scheme == "autoregressive":
                raise ScheduleError(f"{where}: {target} is a token grid; decode it with 'maskgit' or 'roar'")
            limit = modality_info[target]["max_tokens"]  # a grid's cells for token grids
            if limit is not None and ntoks > limit:
                raise ScheduleError(f"{where}: tokens_per_target={ntoks} exceeds the {limit} tokens {target} has; "
                                    f"use at most {limit}")
        if scheme == "autoregressive":
            chained.append(dict(target_domain=target, scheme=scheme, num_tokens=None, temperature=temps[i],
                                cfg_scale=cfg_scales[i], cfg_cond_domains=list(cond_domains)))
        else:
            steps = decoding_steps[i]
            if not isinstance(steps, int) or steps < 1 or steps > ntoks:
                raise ScheduleError(f"{where}: decoding_steps={steps!r}; {scheme} needs an int between 1 and "
                                    f"tokens_per_target ({ntoks})")
            name = token_decoding_schedules[i]
            if name == "cosine":
                tok_sched = cosine_schedule(steps, ntoks)
            elif name == "linear":
                tok_sched = linear_schedule(steps, ntoks)
            else:
                raise ScheduleError(f"{where}: unknown token schedule {name!r}; use one of {TOKEN_SCHEDULES}")
            temp_sched = _temp_schedule(temp_schedules[i], temps[i], tok_sched, where)
            if cfg_schedules[i] != "constant":
                raise ScheduleError(f"{where}: unknown guidance schedule {cfg_schedules[i]!r}; use 'constant'")
            chained.extend(
                dict(target_domain=target, scheme=scheme, num_tokens=int(t), temperature=float(tp),
                     cfg_scale=cfg_scales[i], cfg_cond_domains=list(cond_domains))
                for t, tp in zip(tok_sched, temp_sched))
        if cfg_grow_conditioning:
            cond_domains.append(target)
    return chained

