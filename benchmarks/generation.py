"""Generation throughput: our sampler against the official computation, measured in this run, same tokens.

    fourm-bench bench generation [--models fm_nano_2e_2d_swiglu_nobias,fm_base_12e_12d_swiglu_nobias]
                                 [--batch 8] [--caption-tokens 64] [--threads 2]

Two comparisons per model, each checking that both sides generate identical tokens:
  * caption, greedy autoregressive from RGB: ours (a key/value cache, one new token through the decoder per step)
    vs the reference that recomputes the whole prefix for every token, as the official sampler does. tokens/s.
  * RGB -> tok_depth@224, MaskGIT 8 steps with classifier-free guidance 3.0: the conditional and unconditional
    passes as one batch vs two forward passes per step. steps/s.
Random weights (the speed does not depend on them); ratio above 1: ours is faster.
"""
from __future__ import annotations

import argparse
import time

import torch
from tokenizers import Tokenizer

from fourm.generation import (GenerationSampler, build_chained_generation_schedules, init_empty_target_modality,
                              init_full_input_modality)
from fourm.models.factory import create_model
from fourm.models.parity import default_fixture_dir


def _inputs(model, batch: int, target: str, tokens: int, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(0)
    mod = {"rgb@224": {"tensor": torch.randn(batch, 3, 224, 224, generator=g).to(device)}}
    init_full_input_modality(mod, model.modality_info, "rgb@224", device)
    return init_empty_target_modality(mod, model.modality_info, target, batch, tokens, device)


def _schedule(model, target, scheme, tokens, steps, cfg):
    return build_chained_generation_schedules(
        cond_domains=["rgb@224"], target_domains=[target], tokens_per_target=[tokens], autoregression_schemes=[scheme],
        decoding_steps=[steps], token_decoding_schedules=["cosine"], temps=[0.0], temp_schedules=["constant"],
        cfg_scales=[cfg], cfg_schedules=["constant"], modality_info=model.modality_info)


def _time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_model(name: str, batch: int, caption_tokens: int, tokenizer, repeats: int, device: str = "cpu") -> list[str]:
    torch.manual_seed(0)
    model = create_model(name, domains_in=["rgb@224", "caption"], domains_out=["caption", "tok_depth@224"]).eval().to(device)
    lines = []
    # caption: KV cache vs recomputed prefix
    mod = _inputs(model, batch, "caption", caption_tokens + 1, device)  # [S_1] + the tokens to generate
    sched = _schedule(model, "caption", "autoregressive", caption_tokens + 1, None, 1.0)
    ours = GenerationSampler(model)
    ref = GenerationSampler(model, kv_cache=False)
    t_ours, o = _time(lambda: ours.generate(mod, sched, text_tokenizer=tokenizer), repeats)
    t_ref, r = _time(lambda: ref.generate(mod, sched, text_tokenizer=tokenizer), repeats)
    same = torch.equal(o["caption"]["tensor"], r["caption"]["tensor"])
    n = batch * (o["caption"]["tensor"].shape[1])
    lines.append(f"{name:<32} caption {caption_tokens} tok x{batch}  ours {n / t_ours:8.1f} tok/s   recompute-prefix "
                 f"{n / t_ref:8.1f} tok/s   ratio {t_ref / t_ours:5.2f}x   identical={same}")
    # guided MaskGIT: one batched pass vs two
    mod = _inputs(model, batch, "tok_depth@224", 196, device)
    sched = _schedule(model, "tok_depth@224", "maskgit", 196, 8, 3.0)
    ours, ref = GenerationSampler(model, batch_guidance=True), GenerationSampler(model, batch_guidance=False)
    t_ours, o = _time(lambda: ours.generate(mod, sched), repeats)
    t_ref, r = _time(lambda: ref.generate(mod, sched), repeats)
    same = torch.equal(o["tok_depth@224"]["tensor"], r["tok_depth@224"]["tensor"])
    lines.append(f"{name:<32} cfg MaskGIT 8 steps x{batch}      ours {len(sched) / t_ours:8.2f} st/s    two passes       "
                 f"{len(sched) / t_ref:8.2f} st/s    ratio {t_ref / t_ours:5.2f}x   identical={same}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fourm-bench bench generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fm_nano_2e_2d_swiglu_nobias,fm_base_12e_12d_swiglu_nobias")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--caption-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per variant")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_file(str(default_fixture_dir() / "text_tokenizer_4m_wordpiece_30k.json"))
    print(f"generation throughput, {args.threads} threads, {torch.__version__}")
    ok = True
    for name in args.models.split(","):
        for line in bench_model(name, args.batch, args.caption_tokens, tokenizer, args.repeats):
            print(line, flush=True)
            ok &= line.endswith("identical=True")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
