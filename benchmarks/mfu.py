"""Model FLOPs of a 4M training step, counted analytically, and tokens/s and MFU on this device.

    fourm-bench bench mfu [--model fm_base_12e_12d_swiglu_nobias] [--batch 8] [--enc 128] [--dec 128] [--steps 3]

The step: RGB -> tok_depth@224 with ``--enc`` visible RGB patches and ``--dec`` target tokens per sample (every
count exact, so the formula has no unknowns), forward + backward in fp32 (bf16 autocast on CUDA). FLOPs per step
(:func:`step_flops`): per encoder block QKV 6ND², attention 4N²D, projection 2ND², MLP 2ND·H per matrix (3 matrices
gated, 2 plain); per decoder block the same on the queries plus cross-attention (Q and output 2N_dD² each, KV
4N_eD², scores and values 4N_dN_eD); the context projection 2N_eD², the RGB patch projection 2N·3p²·D, the
logits 2N_d·D·V. Backward is twice the forward, except the patch projection (its input needs no gradient).
``tests/benchmarks/test_mfu.py`` checks this against ``torch.utils.flop_counter.FlopCounterMode``.

MFU = achieved FLOP/s / the device's dense bf16 peak (:data:`PEAK_BF16`, by device name); on CPU only FLOPs and
tokens/s are printed, with the ratio to an eager reference that computes attention explicitly (q·kᵀ, as the
official model does) instead of with SDPA.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

PEAK_BF16 = {  # dense bf16 TFLOP/s, by a substring of torch.cuda.get_device_name()
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12, "V100": 125e12,
    "RTX 4090": 165e12, "A6000": 155e12,
}


def _mlp_hidden(cfg: dict) -> tuple[int, int]:
    hidden = int(cfg["dim"] * cfg.get("mlp_ratio", 4.0))
    return (int(2 * hidden / 3), 3) if cfg.get("gated_mlp") else (hidden, 2)


def forward_flops(cfg: dict, n_enc: int, n_dec: int, n_rgb: int, logit_rows: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Forward FLOPs of one sample (matmuls only: 2 per multiply-add), by part.

    ``n_rgb``: visible RGB patches (they go through the patch projection); ``logit_rows``: modality -> (decoder rows,
    vocabulary)."""
    D, p = cfg["dim"], cfg.get("patch_size", 16)
    H, n_mats = _mlp_hidden(cfg)

    def block(n: int) -> int:
        return 2 * n * D * 3 * D + 4 * n * n * D + 2 * n * D * D + 2 * n * D * H * n_mats

    cross = 2 * n_dec * D * D + 4 * n_enc * D * D + 4 * n_dec * n_enc * D + 2 * n_dec * D * D
    return {
        "patch_proj": 2 * n_rgb * 3 * p * p * D,
        "encoder": cfg["encoder_depth"] * block(n_enc),
        "context_proj": 2 * n_enc * D * D,
        "decoder": cfg["decoder_depth"] * (block(n_dec) + cross),
        "logits": sum(2 * rows * D * vocab for rows, vocab in logit_rows.values()),
    }


def step_flops(cfg: dict, batch: int, n_enc: int, n_dec: int, n_rgb: int, logit_rows: dict) -> int:
    """FLOPs of a training step (forward + backward) over ``batch`` samples."""
    f = forward_flops(cfg, n_enc, n_dec, n_rgb, logit_rows)
    return batch * (3 * sum(f.values()) - f["patch_proj"])


def step_inputs(model, batch: int, n_enc: int, n_dec: int, seed: int = 0) -> dict:
    """RGB with ``n_enc`` visible patches and tok_depth@224 with ``n_dec`` targets per sample."""
    g = torch.Generator().manual_seed(seed)
    info = model.modality_info
    n_rgb, n_tok = info["rgb@224"].num_tokens, info["tok_depth@224"].num_tokens
    size = info["rgb@224"].input_size

    def mask(n_total, n_used):
        m = torch.ones(batch, n_total, dtype=torch.bool)
        for b in range(batch):
            m[b, torch.randperm(n_total, generator=g)[:n_used]] = False
        return m

    tgt = mask(n_tok, n_dec)
    attn = torch.zeros(batch, n_tok, dtype=torch.int64)
    attn[torch.arange(batch), (~tgt).int().argmax(1)] = n_dec  # full attention among the targets
    vocab = model.decoder_embeddings["tok_depth@224"].vocab_size
    return {"rgb@224": {"tensor": torch.randn(batch, 3, size, size, generator=g), "input_mask": mask(n_rgb, n_enc),
                        "target_mask": torch.ones(batch, n_rgb, dtype=torch.bool),
                        "decoder_attention_mask": torch.zeros(batch, n_rgb, dtype=torch.int64)},
            "tok_depth@224": {"tensor": torch.randint(0, vocab, (batch, n_tok), generator=g),
                              "input_mask": torch.ones(batch, n_tok, dtype=torch.bool), "target_mask": tgt,
                              "decoder_attention_mask": attn}}


@contextlib.contextmanager
def explicit_attention():
    """Attention as softmax(q·kᵀ/√d + mask)·v in plain matmuls (the official model's way, and what a FLOP counter
    sees; SDPA's fused CPU kernel is invisible to it)."""
    sdpa = F.scaled_dot_product_attention

    def explicit(q, k, v, attn_mask=None, dropout_p=0.0, **kw):
        s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            s = s + attn_mask
        return s.softmax(-1) @ v

    F.scaled_dot_product_attention = explicit
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def _step(model, inputs, n_enc, n_dec, autocast: bool):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss, _ = model(inputs, n_enc, n_dec)
    loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> int:
    from fourm.models.factory import create_model

    p = argparse.ArgumentParser(prog="fourm-bench bench mfu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fm_base_12e_12d_swiglu_nobias")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--enc", type=int, default=128)
    p.add_argument("--dec", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = create_model(args.model, domains_in=["rgb@224", "tok_depth@224"], domains_out=["tok_depth@224"]).to(device).train()
    inputs = {m: {k: v.to(device) for k, v in d.items()} for m, d in step_inputs(model, args.batch, args.enc, args.dec).items()}
    vocab = model.decoder_embeddings["tok_depth@224"].vocab_size
    flops = step_flops(model.config, args.batch, args.enc, args.dec, args.enc, {"tok_depth@224": (args.dec, vocab)})
    name = torch.cuda.get_device_name() if cuda else "CPU"

    def timed(ctx) -> float:
        with ctx:
            _step(model, inputs, args.enc, args.dec, cuda)  # warm-up
            best = float("inf")
            for _ in range(args.steps):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                _step(model, inputs, args.enc, args.dec, cuda)
                if cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
        return best

    t_ours = timed(contextlib.nullcontext())
    t_ref = timed(explicit_attention())
    tokens = args.batch * (args.enc + args.dec)
    print(f"{args.model} on {name}: batch {args.batch}, {args.enc}+{args.dec} tokens, {flops / 1e12:.3f} TFLOP/step")
    print(f"  ours (SDPA):          {t_ours * 1e3:8.1f} ms/step  {tokens / t_ours:9.1f} tok/s  {flops / t_ours / 1e12:7.3f} TFLOP/s")
    print(f"  explicit q·kᵀ (ref):  {t_ref * 1e3:8.1f} ms/step  {tokens / t_ref:9.1f} tok/s   ratio {t_ref / t_ours:.2f}x")
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak:
        print(f"  MFU: {100 * flops / t_ours / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16 dense")
    else:
        print("  MFU: no bf16 peak known for this device (CPU or unlisted GPU); FLOPs and tokens/s only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
