"""4M masking throughput: the batch-vectorised `UnifiedMasking` against a per-sample loop (measured in this run).

    python -m benchmarks.masking [--batch 64] [--rounds 7] [--tokens 128] [--threads 1]

The baseline is written here the straightforward way the official 4M data pipeline works: for each sample draw a
component and Dirichlet budgets with ``torch.distributions`` (floor, remainder by arg-max draws, clamp), build each
image mask from an argsort of noise, span-mask each caption / det string with Python lists, then collate the
per-sample dicts into a batch. Both sides mask the same 4M-7 batch (RGB at 224 px, five 14x14 token grids, caption
and det strings) with the same alphas mixture and tokenizer and return the same batch format; the ratio compares
samples per second. It is measured twice: with caption/det as strings (both sides pay the same WordPiece
tokenization, which is most of the vectorised time) and with them pre-tokenized to ids (the masking alone).
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from torch.distributions import Dirichlet
from tqdm import tqdm

from fourm import modalities as registry
from fourm.modalities import spec
from fourm.data.masking import UnifiedMasking, load_alphas
from fourm.data.text import boxes_to_text, load_tokenizer, special_ids, train_wordpiece

OFFICIAL_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_4m" / "text_tokenizer_4m_wordpiece_30k.json"
WORDS = ("a small red bicycle leaning against white wall two dogs running on sandy beach at sunset old man in blue "
         "coat reading newspaper park bench next to sleeping dog three zebras grazing tall grass kitchen with").split()
CLASSES = ("person", "dog", "cat", "car", "bicycle", "teddy bear", "bench", "zebra")


def make_batch(batch: int, names: list[str], seed: int = 0) -> dict:
    """A 4M-7 batch: normalised RGB, random token ids, captions of 4-30 words, 0-8 boxes per image as det text."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    out = {}
    for n in names:
        mod = registry.get(n)
        if mod.kind == "image":
            out[n] = torch.randn(batch, 3, mod.input_size, mod.input_size, generator=g)
        elif mod.kind == "image_tokens":
            out[n] = torch.randint(0, mod.vocab_size, (batch, mod.grid, mod.grid), generator=g)
        elif spec(n).value == "boxes":
            out[n] = []
            for _ in range(batch):
                boxes = []
                for _ in range(rng.randint(0, 8)):
                    x, y = rng.uniform(0, 180), rng.uniform(0, 180)
                    boxes.append((x, y, x + rng.uniform(5, 44), y + rng.uniform(5, 44), rng.choice(CLASSES)))
                out[n].append(boxes_to_text(boxes, 224))
        else:
            out[n] = [" ".join(rng.choices(WORDS, k=rng.randint(4, 30))) for _ in range(batch)]
    return out


class PerSampleMasking:
    """Reference: the 4M masking algorithm one sample at a time (python lists, torch.distributions, then collate)."""

    def __init__(self, names, alphas, num_input_tokens: int, num_target_tokens: int, tokenizer):
        mix = load_alphas(alphas)
        self.mods = [registry.get(n) for n in names]
        self.n_in, self.n_tg = num_input_tokens, num_target_tokens
        eps = 1e-9
        self.in_dir = [Dirichlet(torch.clamp(a, min=eps)) for a in mix.input_matrix(names).float()]
        self.tg_dir = [Dirichlet(torch.clamp(a, min=eps)) for a in mix.target_matrix(names).float()]
        self.keep = [mix.alphas[n].keep for n in names]
        self.max_tokens = torch.tensor([m.num_tokens for m in self.mods])
        self.min_tokens = torch.tensor([m.min_tokens for m in self.mods])
        self.is_img = torch.tensor([m.kind != "sequence" for m in self.mods])
        self.tok = tokenizer
        ids = special_ids(tokenizer)
        self.pad, self.eos, self.sentinels = ids.pad, ids.eos, ids.sentinels

    def _budget(self, dirichlet, total, cap):
        for _ in range(100):
            b = (dirichlet.sample() * total).floor().int()
            b += torch.bincount(dirichlet.sample((int(total - b.sum()),)).argmax(-1), minlength=len(b))
            b = torch.minimum(b, cap)
            if (b >= self.min_tokens).all():
                return b
        return b

    def _span_mask(self, seq, keep_prob):
        masks = (torch.rand(len(seq)) > keep_prob).tolist()
        inp, tgt, prev, n = [], [], False, 0
        for t, m in zip(seq, masks):
            if m:
                if not prev:
                    n += 1
                    inp.append(self.sentinels[n])
                    tgt.append(self.sentinels[n])
                tgt.append(t)
            else:
                inp.append(t)
            prev = m
        tgt.append(self.sentinels[n + 1])
        return inp, tgt

    def _sequence(self, text, max_tokens, in_b, tg_b, keep):
        ids = self.tok.encode(text).ids if isinstance(text, str) else list(text)
        seq = (ids + [self.eos])[:max_tokens]
        if in_b == 0:
            inp, tgt = [], self._span_mask(seq, 0.0)[1]
        else:
            kp = {"random": random.random(), "all": 1.0, "binary": random.choice([0.0, 1.0])}[keep]
            inp, tgt = self._span_mask(seq, kp)
            while len(inp) > in_b:
                kp *= 0.9
                inp, tgt = self._span_mask(seq, kp)
        if len(tgt) > tg_b:
            sent = [i for i, t in enumerate(tgt) if t in self.sentinels]
            k = sent[random.randrange(max(1, len(sent) - 1))]
            tgt = tgt[k : k + tg_b] if len(tgt) - k >= tg_b else tgt[next(i for i in sent if len(tgt) - i <= tg_b) :]
        width = 2 * (max_tokens + 1)
        tensor = torch.full((width,), self.pad, dtype=torch.int32)
        input_mask = torch.ones(width, dtype=torch.bool)
        target_mask = torch.ones(width, dtype=torch.bool)
        tensor[: len(inp)] = torch.tensor(inp, dtype=torch.int32)
        input_mask[: len(inp)] = False
        tensor[in_b : in_b + len(tgt)] = torch.tensor(tgt, dtype=torch.int32)
        target_mask[in_b : in_b + len(tgt)] = False
        return {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask,
                "decoder_attention_mask": (~target_mask).int()}

    def _image(self, x, n, in_b, tg_b):
        order = torch.argsort(torch.rand(n))
        input_mask = torch.ones(n, dtype=torch.bool)
        input_mask[:in_b] = False
        input_mask = input_mask[order]
        target_mask = torch.ones(n, dtype=torch.bool)
        target_mask[in_b : in_b + tg_b] = False
        target_mask = target_mask[order]
        dam = torch.zeros(n, dtype=torch.int32)
        dam[torch.argmin(target_mask + torch.arange(n) * 1e-6)] = (~target_mask).sum()
        return {"tensor": x, "input_mask": input_mask, "target_mask": target_mask, "decoder_attention_mask": dam}

    def one(self, sample: dict) -> dict:
        c = random.randrange(len(self.in_dir))
        in_b = self._budget(self.in_dir[c], self.n_in, self.max_tokens)
        room = torch.maximum(torch.where(self.is_img, self.max_tokens - in_b, self.max_tokens), self.min_tokens)
        tg_b = self._budget(self.tg_dir[c], self.n_tg, room)
        out = {}
        for j, mod in enumerate(self.mods):
            if mod.kind == "sequence":
                out[mod.name] = self._sequence(sample[mod.name], mod.num_tokens, int(in_b[j]), int(tg_b[j]), self.keep[j][c])
            else:
                out[mod.name] = self._image(sample[mod.name], mod.grid * mod.grid, int(in_b[j]), int(tg_b[j]))
        return out

    def __call__(self, batch: dict) -> dict:
        size = len(next(iter(batch.values())))
        per_sample = [self.one({k: v[i] for k, v in batch.items()}) for i in range(size)]
        return {m: {k: torch.stack([s[m][k] for s in per_sample]) for k in per_sample[0][m]} for m in per_sample[0]}


def _tokenizer():
    if OFFICIAL_TOKENIZER.is_file():
        return load_tokenizer(OFFICIAL_TOKENIZER)
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    return train_wordpiece(texts, vocab_size=4400)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _time(ours, ref, data, g, rounds: int) -> tuple[float, float]:
    """Median seconds per batch, timed in alternation (3 vectorised batches, then 1 reference batch, per round) so
    that load from other processes hits both sides alike."""
    ours_t, ref_t = [], []
    for _ in tqdm(range(rounds), desc="masking benchmark", leave=False):
        for _ in range(3):
            t0 = time.perf_counter()
            ours(data, g)
            ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref(data)
        ref_t.append(time.perf_counter() - t0)
    return _median(ours_t), _median(ref_t)


def measure(batch: int = 64, rounds: int = 7, tokens: int = 128, alphas: str = "mix_mod7_all2all_rgb2all_a0.5") -> dict:
    """samples/s of the vectorised masking and of the per-sample reference on the same 4M-7 batch, with caption and
    det given as strings (tokenized inside, as in the official pipeline) and as pre-tokenized ids."""
    names = list(registry.MOD7)
    tok = _tokenizer()
    data = make_batch(batch, names)
    seqs = [n for n in names if registry.get(n).kind == "sequence"]
    pretok = {**data, **{n: [e.ids for e in tok.encode_batch(data[n])] for n in seqs}}
    ours = UnifiedMasking(names, alphas, tokens, tokens, tok)
    ref = PerSampleMasking(names, alphas, tokens, tokens, tok)
    g = torch.Generator().manual_seed(0)
    random.seed(0)
    torch.manual_seed(0)
    out, ref_out = ours(data, g), ref(data)  # warm-up; also checks both produce the same format
    for m in names:
        for k, v in out[m].items():
            assert v.shape == ref_out[m][k].shape and v.dtype == ref_out[m][k].dtype, (m, k)
    ours_s, ref_s = _time(ours, ref, data, g, rounds)
    ours_ids_s, ref_ids_s = _time(ours, ref, pretok, g, rounds)
    used = lambda o: float(sum((~o[m]["input_mask"]).sum() for m in names)) / batch  # noqa: E731
    return {"batch": batch, "threads": torch.get_num_threads(),
            "ours_samples_s": batch / ours_s, "ref_samples_s": batch / ref_s, "speedup": ref_s / ours_s,
            "ours_ids_samples_s": batch / ours_ids_s, "ref_ids_samples_s": batch / ref_ids_s,
            "speedup_ids": ref_ids_s / ours_ids_s,
            "ours_input_tokens": used(out), "ref_input_tokens": used(ref_out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.masking", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (3 vectorised + 1 reference batch each)")
    p.add_argument("--tokens", type=int, default=128, help="input and target tokens per sample")
    p.add_argument("--alphas", default="mix_mod7_all2all_rgb2all_a0.5")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as in DataLoader workers, where masking runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = measure(args.batch, args.rounds, args.tokens, args.alphas)
    print(f"4M-7 masking, batch {r['batch']}, {args.tokens}+{args.tokens} tokens, {args.alphas}, "
          f"{r['threads']} torch threads")
    print(f"  mean input tokens used per sample: vectorised {r['ours_input_tokens']:.1f}, "
          f"reference {r['ref_input_tokens']:.1f} (of {args.tokens})")
    print(f"  strings in (tokenized inside, both sides): vectorised {r['ours_samples_s']:7.0f} samples/s, "
          f"per-sample {r['ref_samples_s']:5.0f} samples/s -> {r['speedup']:.1f}x")
    print(f"  token ids in (pre-tokenized, both sides):  vectorised {r['ours_ids_samples_s']:7.0f} samples/s, "
          f"per-sample {r['ref_ids_samples_s']:5.0f} samples/s -> {r['speedup_ids']:.1f}x")
    print(f"  ratio (strings in): vectorised is {r['speedup']:.1f}x faster (target >= 10x); "
          f"masking alone: {r['speedup_ids']:.1f}x")
    return 0


cli = main

if __name__ == "__main__":
    raise SystemExit(main())
