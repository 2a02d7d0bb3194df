"""Learning-rate schedule by *tokens seen*, as 4M configs express it (warmup_tokens, total_tokens)."""
from __future__ import annotations

import math


def scaled_lr(blr: float, global_batch: int, reference_batch: int = 256) -> float:
    """4M's linear scaling rule: lr = blr * global_batch / 256."""
    return blr * global_batch / reference_batch


def lr_at(tokens_seen: float, lr: float, warmup_tokens: float, total_tokens: float, min_lr: float = 0.0) -> float:
    """Linear warmup to ``lr`` over ``warmup_tokens``, then cosine decay to ``min_lr`` at ``total_tokens``."""
    if warmup_tokens > 0 and tokens_seen < warmup_tokens:
        return lr * tokens_seen / warmup_tokens
    if tokens_seen >= total_tokens:
        return min_lr
    progress = (tokens_seen - warmup_tokens) / max(total_tokens - warmup_tokens, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
