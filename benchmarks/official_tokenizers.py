"""Throughput of the official 4M tokenizers at their released size (random weights: the architecture is what costs),
each against its plain computation measured in the same run.

    fourm-bench bench tokenizers --official [--batch 8] [--size 224] [--steps 10,25,50] [--divae-batch 2]

* ViT VQ-VAE encode (the released semseg tokenizer's architecture, ViT-B, 224 px): images/s batched vs one image at a
  time (fp32 eager), and bf16 autocast with the share of tokens it keeps identical.
* DiVAE decode (the released depth tokenizer: ViT-B encoder, patched UNet of 256 channels) with DDIM: images/s at
  each step count, batched vs one image at a time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fourm.tokenizers import build_tokenizer

MANIFEST = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_tokenizers" / "real_architecture_manifest.json"


def _config(name: str) -> dict:
    return json.loads(MANIFEST.read_text())["tokenizers"][name]["config_inferred"]


def _timed(fn, repeat: int = 1, warmup: bool = True) -> float:
    if warmup:  # first-call allocations and kernel selection are not throughput
        fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


@torch.inference_mode()
def encode_bench(batch: int, size: int) -> dict:
    torch.manual_seed(0)
    model = build_tokenizer(_config("semseg_4k_224-448")).eval()
    ids = torch.randint(0, 134, (batch, size, size))
    batched = _timed(lambda: model.tokenize(ids))
    single = _timed(lambda: [model.tokenize(ids[i:i + 1]) for i in range(batch)])
    fp32 = model.tokenize(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_s = _timed(lambda: model.tokenize(ids))
        bf16 = model.tokenize(ids)
    return {"images": batch, "batched_img_s": batch / batched, "single_img_s": batch / single,
            "bf16_img_s": batch / bf16_s, "bf16_tokens_identical": float((bf16 == fp32).double().mean())}


@torch.inference_mode()
def decode_bench(batch: int, size: int, steps: list[int]) -> list[dict]:
    torch.manual_seed(0)
    model = build_tokenizer(_config("depth_8k_224-448")).eval()
    grid = size // 16
    ids = torch.randint(0, model.vocab_size, (batch, grid, grid))
    out = []
    for n in steps:
        def run(b=batch, n=n):
            return model.decode_tokens(ids[:b], timesteps=n, generator=torch.Generator().manual_seed(0),
                                       image_size=size, scheduler="ddim")
        # a decode is many network passes: the first of them is the warm-up
        batched = _timed(run, warmup=False)
        single = _timed(lambda: [model.decode_tokens(ids[i:i + 1], timesteps=n, generator=torch.Generator().manual_seed(0),
                                                     image_size=size, scheduler="ddim") for i in range(batch)], warmup=False)
        out.append({"steps": n, "batched_img_s": batch / batched, "single_img_s": batch / single})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fourm-bench bench tokenizers --official", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", default="10,25,50")
    ap.add_argument("--divae-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    e = encode_bench(a.batch, a.size)
    print(f"ViT VQ-VAE encode (semseg_4k architecture, {a.size} px, {a.threads} threads, batch {a.batch})")
    print(f"  one image at a time, fp32  {e['single_img_s']:8.2f} img/s   (baseline)")
    print(f"  batched, fp32              {e['batched_img_s']:8.2f} img/s   {e['batched_img_s'] / e['single_img_s']:.2f}x")
    print(f"  batched, bf16 autocast     {e['bf16_img_s']:8.2f} img/s   {e['bf16_img_s'] / e['single_img_s']:.2f}x, "
          f"{100 * e['bf16_tokens_identical']:.1f}% of tokens identical to fp32")
    print(f"DiVAE decode with DDIM (depth_8k architecture, {a.size} px, batch {a.divae_batch})")
    for r in decode_bench(a.divae_batch, a.size, [int(s) for s in a.steps.split(",")]):
        print(f"  {r['steps']:3d} steps: one at a time {r['single_img_s']:7.3f} img/s, batched {r['batched_img_s']:7.3f} img/s"
              f"   {r['batched_img_s'] / r['single_img_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
