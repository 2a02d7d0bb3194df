"""4M train-step throughput: our FourM against a straightforward reference of the same architecture, same process.

    python -m benchmarks.train_step [--model fm_base_12e_12d_swiglu_nobias] [--batch 8] [--tokens 128] [--steps 3]

The reference is written the plain way: attention as explicit ``softmax(q k^T) v`` with ``masked_fill``, the
token selection, decoder masks and losses built with per-sample / per-modality Python loops, every embedding
computed for all positions before selection. It runs the *same weights* on the *same masked batches* (4M-7
modalities, official-style 4M-7 alphas mixture, 128 input + 128 target tokens) and its loss is checked against
ours before timing. Reported: median forward+backward seconds per step, tokens/s (batch x (input + target) slots)
and the ratio ours / reference. On a GPU (``--device cuda``) it also reports bf16 model FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fourm import modalities as M
from fourm.data.masking import UnifiedMasking
from fourm.data.text import load_tokenizer
from fourm.models import create_model

MODS = ["rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224", "tok_clip@224", "caption", "det"]
CAPTIONS = ["a small red bicycle leaning against a white wall", "two dogs running on a sandy beach at sunset",
            "an old man in a blue coat reading a newspaper on a park bench", "three zebras grazing in tall grass"]


def make_batches(n: int, batch: int, tokens: int, tokenizer_path: str, seed: int = 0) -> list[dict]:
    tok = load_tokenizer(tokenizer_path)
    masking = UnifiedMasking(MODS, "mix_mod7_all2all_rgb2all_a0.5", tokens, tokens, text_tokenizer=tok)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        raw = {"rgb@224": torch.randn(batch, 3, 224, 224, generator=g)}
        for m in MODS[1:6]:
            raw[m] = torch.randint(0, M.get(m).vocab_size, (batch, 14, 14), generator=g)
        raw["caption"] = [CAPTIONS[(i + b) % 4] for b in range(batch)]
        raw["det"] = [[f"v0={10 * b} v1=20 v2={300 + b} v3=400 dog", "v0=500 v1=510 v2=900 v3=990 person"] for b in range(batch)]
        out.append(masking(raw, generator=g))
    return out


# --- the reference ---------------------------------------------------------------------------------------------

def _ln(x, norm):
    return F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps)


def _naive_attention(q, k, v, mask):
    att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        att = att.masked_fill(mask.unsqueeze(1), -torch.finfo(att.dtype).max)
    return att.softmax(-1) @ v


def _self_attn(attn, x, mask):
    B, N, C = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    return attn.proj(_naive_attention(q, k, v, mask).transpose(1, 2).reshape(B, N, C))


def _cross_attn(attn, x, ctx, mask):
    B, N, C = x.shape
    h = attn.num_heads
    q = attn.q(x).reshape(B, N, h, C // h).transpose(1, 2)
    k, v = attn.kv(ctx).reshape(B, ctx.shape[1], 2, h, C // h).permute(2, 0, 3, 1, 4)
    return attn.proj(_naive_attention(q, k, v, mask).transpose(1, 2).reshape(B, N, C))


def _mlp(mlp, x):
    if hasattr(mlp, "fc3"):
        return mlp.fc2(mlp.act(mlp.fc1(x)) * mlp.fc3(x))
    return mlp.fc2(mlp.act(mlp.fc1(x)))


def reference_loss(model, mod_dict, n_enc, n_dec, order):
    """The same computation as FourM.forward(loss_type='mod'), written with loops and naive attention."""
    B = next(iter(mod_dict.values()))["input_mask"].shape[0]
    info = model.modality_info
    enc = {m: model.encoder_embeddings[m](d) for m, d in mod_dict.items() if m in model.encoder_embeddings}
    dec = {m: model.decoder_embeddings[m].forward_embed(d) for m, d in mod_dict.items() if m in model.decoder_embeddings}
    # encoder selection, one sample at a time
    toks, embs, masks = [], [], []
    for b in range(B):
        rows_x, rows_e = [], []
        for m, d in enc.items():
            keep = (~d["input_mask"][b]).nonzero().flatten()
            rows_x.append(d["x"][b, keep])
            rows_e.append(d["emb"][b, keep])
        x, e = torch.cat(rows_x)[:n_enc], torch.cat(rows_e)[:n_enc]
        pad = n_enc - x.shape[0]
        toks.append(F.pad(x, (0, 0, 0, pad)))
        embs.append(F.pad(e, (0, 0, 0, pad)))
        masks.append(torch.arange(n_enc) >= x.shape[0])
    x, emb, emask = torch.stack(toks), torch.stack(embs), torch.stack(masks)[:, None, :]
    h = x + emb
    for blk in model.encoder:
        h = h + _self_attn(blk.attn, _ln(h, blk.norm1), emask)
        h = h + _mlp(blk.mlp, _ln(h, blk.norm2))
    h = _ln(h, model.encoder_norm)
    context = model.decoder_proj_context(h) + emb
    # decoder selection, one sample at a time, modalities in the drawn order
    ys, ye, tgt, mods, groups = [], [], [], [], []
    for b in range(B):
        rx, re_, rt, rm, rg = [], [], [], [], []
        for m in order:
            d = dec[m]
            if info[m].kind == "sequence":
                tm = d["target_mask"][b]
                valid = (~(tm[1:] | tm[:-1])).nonzero().flatten()
                rx.append(d["x"][b, valid]); re_.append(d["emb"][b, valid]); rt.append(d["ids"][b, valid + 1])
                rg += [("seq", m)] * len(valid)
            else:
                valid = (~d["target_mask"][b]).nonzero().flatten()
                rx.append(model.mask_token[0].expand(len(valid), -1)); re_.append(d["emb"][b, valid]); rt.append(d["ids"][b, valid])
                rg += [("img", m)] * len(valid)
            rm += [m] * len(valid)
        n = min(n_dec, sum(len(t) for t in rt))
        cat = lambda t: torch.cat(t)[:n]  # noqa: E731
        ys.append(F.pad(cat(rx), (0, 0, 0, n_dec - n))); ye.append(F.pad(cat(re_), (0, 0, 0, n_dec - n)))
        tgt.append(F.pad(cat(rt), (0, n_dec - n))); mods.append(rm[:n]); groups.append(rg[:n])
    y = torch.stack(ys) + torch.stack(ye)
    targets = torch.stack(tgt)
    # decoder self-attention mask, one sample at a time: image tokens see their whole modality, sequences are causal
    sa = torch.ones(B, n_dec, n_dec, dtype=torch.bool)
    for b in range(B):
        for i, (kind_i, m_i) in enumerate(groups[b]):
            for j, (kind_j, m_j) in enumerate(groups[b]):
                if m_i == m_j and (kind_i == "img" or j <= i):
                    sa[b, i, j] = False
    for blk in model.decoder:
        y = y + _self_attn(blk.self_attn, _ln(y, blk.norm1), sa)
        y = y + _cross_attn(blk.cross_attn, _ln(y, blk.query_norm), _ln(context, blk.context_norm), emask)
        y = y + _mlp(blk.mlp, _ln(y, blk.norm2))
    y = _ln(y, model.decoder_norm)
    losses = []
    for m in dec:
        rows = [(b, i) for b in range(B) for i, mm in enumerate(mods[b]) if mm == m]
        if not rows:
            losses.append(y.sum() * 0)
            continue
        idx_b, idx_i = zip(*rows)
        logits = model.decoder_embeddings[m].forward_logits(y[list(idx_b), list(idx_i)])
        losses.append(F.cross_entropy(logits, targets[list(idx_b), list(idx_i)].long()))
    return sum(losses) / len(losses)


def _time(fn, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fm_base_12e_12d_swiglu_nobias")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokenizer", default=None, help="WordPiece JSON (default: the official one in shared/fixtures)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fourm.models.parity import default_fixture_dir

    tok = args.tokenizer or str(default_fixture_dir() / "text_tokenizer_4m_wordpiece_30k.json")
    torch.manual_seed(0)
    model = create_model(args.model, domains_in=MODS, domains_out=MODS[1:]).to(args.device).train()
    batches = make_batches(args.steps + 1, args.batch, args.tokens, tok)
    batches = [{m: {k: v.to(args.device) for k, v in d.items()} for m, d in b.items()} for b in batches]
    order = [m for m in MODS[1:]]
    seq = iter(range(10**9))

    def ours():
        b = batches[next(seq) % len(batches)]
        loss, _ = model(b, args.tokens, args.tokens, rng=_FixedOrder(order))
        loss.backward()
        model.zero_grad(set_to_none=True)

    def ref():
        b = batches[next(seq) % len(batches)]
        loss = reference_loss(model, b, args.tokens, args.tokens, order)
        loss.backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():  # same numbers first, then time
        a, _ = model(batches[0], args.tokens, args.tokens, rng=_FixedOrder(order))
        r = reference_loss(model, batches[0], args.tokens, args.tokens, order)
    print(f"loss ours {a.item():.6f}  reference {r.item():.6f}  |diff| {abs(a.item() - r.item()):.2e}")
    assert abs(a.item() - r.item()) < 1e-3 * max(1.0, abs(r.item())), "reference and FourM disagree"
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ours(); ref(); sync()  # warm-up
    t_ours, t_ref = [], []
    for _ in range(args.steps):  # interleaved so background load hits both sides alike
        t_ours += _time(lambda: (ours(), sync()), 1)
        t_ref += _time(lambda: (ref(), sync()), 1)
    slots = args.batch * 2 * args.tokens
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    res = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "ours_s": mo, "reference_s": mr,
           "ours_tokens_per_s": slots / mo, "reference_tokens_per_s": slots / mr, "ratio": mr / mo}
    print(f"{args.model} batch {args.batch}, {args.tokens}+{args.tokens} tokens, {args.device}, {args.threads} threads")
    print(f"  ours      {mo:7.3f} s/step  {slots / mo:9.1f} tokens/s   (steps {['%.2f' % t for t in t_ours]})")
    print(f"  reference {mr:7.3f} s/step  {slots / mr:9.1f} tokens/s   (steps {['%.2f' % t for t in t_ref]})")
    print(f"  ratio ours/reference: {mr / mo:.2f}x")
    return res


class _FixedOrder:
    """Decoder modality order fixed for the comparison (the official code draws it with `random`)."""

    def __init__(self, order):
        self.order = order

    def sample(self, population, k):
        return [m for m in self.order if m in population]


if __name__ == "__main__":
    main()
