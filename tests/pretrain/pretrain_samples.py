"""In-memory pretraining samples (random token grids, small RGB, real captions) for loop-mechanics tests.

Importable by the DDP worker script, so every process builds exactly the same samples.
"""
import torch

TOKENS = {"tok_rgb@224": 16384, "tok_depth@224": 8192, "tok_normal@224": 8192, "tok_semseg@224": 4096}
CAPTIONS = ["a red cube left of a large blue sphere on a wooden floor", "two green cones in front of a yellow wall",
            "a small purple torus behind a white cylinder", "an orange pyramid next to a grey box"]


def make_samples(n: int, seed: int, vocab_limit: int | None = None) -> list[dict]:
    """``vocab_limit`` draws token ids from a small range, which a model can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s = {"rgb@224": torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8, generator=g)}
        for mod, vocab in TOKENS.items():
            s[mod] = torch.randint(0, min(vocab, vocab_limit or vocab), (14, 14), generator=g)
        s["caption"] = CAPTIONS[i % len(CAPTIONS)]
        s["det"] = [f"v0={10 + i} v1=20 v2={60 + i} v3=90 cube", "v0=100 v1=110 v2=180 v3=200 sphere"]
        out.append(s)
    return out


def tiny_config(tokenizer: str, **overrides) -> dict:
    from fourm.pretrain.loop import resolve

    args = [f"data.text_tokenizer={tokenizer}", "batch_size=4", "budget.num_input_tokens=32", "budget.num_target_tokens=32",
            "val.every_steps=3", "val.batches=1", "checkpoint.every_steps=3", "schedule.warmup_tokens=256",
            "schedule.total_tokens=4096"]
    args += [f"{k}={v}" for k, v in overrides.items()]
    return resolve(args)
