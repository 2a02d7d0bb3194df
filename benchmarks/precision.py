"""bf16 autocast against fp32 for the 4M train step on this CPU: step time and how far the losses drift.

    fourm-bench bench precision [--models fm_nano_2e_2d_swiglu_nobias,fm_base_12e_12d_swiglu_nobias] [--steps 20,3]

For each model: the same initial weights and the same masked batches (4M-7 modalities, 128 + 128 tokens, batch 8)
trained ``steps`` AdamW steps (lr 1e-3, so that the losses move) in fp32 and in bf16 autocast (``precision=bf16``: matmuls in bf16, weights, optimizer
state and losses in fp32). Reported: median seconds per step of each and their ratio, the largest relative
difference of the per-step losses, and whether it is within the tolerance (``--tolerance``, default 2%) a run may
use bf16 on a CPU at.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from benchmarks.train_step import MODS, _FixedOrder, make_batches
from fourm.models import create_model


def run(model, batches, tokens: int, bf16: bool, lr: float) -> tuple[list[float], list[float]]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    order = list(MODS[1:])
    losses, times = [], []
    for b in batches:
        t = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            loss, _ = model(b, tokens, tokens, rng=_FixedOrder(order))
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
    return losses, times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fourm-bench bench precision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fm_nano_2e_2d_swiglu_nobias,fm_base_12e_12d_swiglu_nobias")
    p.add_argument("--steps", default="20,3", help="steps per model (comma-separated, one per model)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (large enough for the losses to move)")
    p.add_argument("--tolerance", type=float, default=0.02, help="largest relative loss difference bf16 may show")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fourm.models.parity import default_fixture_dir

    tok = str(default_fixture_dir() / "text_tokenizer_4m_wordpiece_30k.json")
    models, steps = args.models.split(","), [int(s) for s in args.steps.split(",")]
    print(f"{'model':<32} {'steps':>5} {'fp32 s/step':>11} {'bf16 s/step':>11} {'speed-up':>8} {'max rel loss diff':>17}  within")
    for name, n in zip(models, steps):
        torch.manual_seed(0)
        base = create_model(name, domains_in=MODS, domains_out=MODS[1:]).train()
        batches = make_batches(n + 1, args.batch, args.tokens, tok)
        l32, t32 = run(copy.deepcopy(base), batches, args.tokens, False, args.lr)
        l16, t16 = run(copy.deepcopy(base), batches, args.tokens, True, args.lr)
        diff = max(abs(a - b) / abs(a) for a, b in zip(l32, l16))
        s32, s16 = statistics.median(t32[1:]), statistics.median(t16[1:])  # the first step warms up
        print(f"{name:<32} {n:>5} {s32:>11.3f} {s16:>11.3f} {s32 / s16:>7.2f}x {diff:>17.4f}  "
              f"{'yes' if diff <= args.tolerance else 'no'}")
        print(f"  losses fp32 {[round(x, 4) for x in l32[:3]]} ... {l32[-1]:.4f}; bf16 {[round(x, 4) for x in l16[:3]]} ... {l16[-1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
