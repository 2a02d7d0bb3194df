"""4M masking: Dirichlet-mixture budgets (statistics, seeded), image masks, span masking, official batch format."""
import random
import re
from pathlib import Path

import pytest
import torch

from fourm.data.masking import (
    Budgets,
    UnifiedMasking,
    load_alphas,
    sample_dirichlet,
    shipped_alphas,
    trim_sequence_padding,
)
from fourm.data.text import boxes_to_chunks, load_tokenizer, merge_spans, special_ids, train_wordpiece
from fourm.modalities import MOD7, MOD21
from fourm.models import create_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official_4m"
OFFICIAL_TOK = FIXTURES / "text_tokenizer_4m_wordpiece_30k.json"
IO = FIXTURES / "tiny_4m7_io.safetensors"

CAPTIONS = [
    "a small red bicycle leaning against a white wall",
    "two dogs running on a sandy beach at sunset",
    "a cat",
    "an old man in a blue coat reading a newspaper on a park bench next to a sleeping dog",
    "",
    "three zebras",
]
TOKEN_MODS = ["tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224", "tok_clip@224"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(OFFICIAL_TOK)


def one_component(inputs: dict, targets: dict, keep=None) -> dict:
    cfg = {m: {"input_alphas": [inputs.get(m, 0.0)], "target_alphas": [targets.get(m, 0.0)]} for m in {*inputs, *targets}}
    for m, k in (keep or {}).items():
        cfg[m]["keep"] = [k]
    return cfg


def make_batch(names, B, g, captions=None):
    batch = {}
    for n in names:
        if n == "rgb@224":
            batch[n] = torch.randn(B, 3, 32, 32, generator=g)  # pixels are passed through untouched
        elif n.startswith("tok_"):
            batch[n] = torch.randint(0, 4096, (B, 14, 14), generator=g)
        elif n == "caption":
            batch[n] = [(captions or CAPTIONS)[i % len(captions or CAPTIONS)] for i in range(B)]
        elif n == "det":
            boxes = [(1, 2, 10, 12, "person"), (5, 5, 30, 31, "dog"), (20, 3, 31, 9, "teddy bear")]
            batch[n] = [boxes_to_chunks(boxes[: i % 4], 32) for i in range(B)]
    return batch


# --- official batch format ---------------------------------------------------------------------------------------


def check_image_format(d, B, N, in_b=None, tg_b=None):
    assert d["input_mask"].dtype == torch.bool and d["input_mask"].shape == (B, N)
    assert d["target_mask"].dtype == torch.bool and d["target_mask"].shape == (B, N)
    dam = d["decoder_attention_mask"]
    assert dam.dtype == torch.int32 and dam.shape == (B, N)
    inp, tgt = ~d["input_mask"], ~d["target_mask"]
    assert not (inp & tgt).any(), "a position is both input and target"
    for b in range(B):
        count = int(tgt[b].sum())
        nz = dam[b].nonzero().flatten().tolist()
        if count == 0:
            assert nz == []
        else:
            first = int(tgt[b].nonzero()[0])
            assert nz == [first] and int(dam[b, first]) == count
    if in_b is not None:
        assert inp.sum(1).tolist() == list(in_b)
        assert tgt.sum(1).tolist() == list(tg_b)


def check_sequence_format(d, B, sentinel_ids, pad=0, max_tokens=256, in_b=None, tg_b=None):
    W = 2 * (max_tokens + 1)
    t = d["tensor"]
    assert t.dtype == torch.int32 and t.shape == (B, W)
    for k in ("input_mask", "target_mask"):
        assert d[k].dtype == torch.bool and d[k].shape == (B, W)
    dam = d["decoder_attention_mask"]
    assert dam.dtype == torch.int32 and dam.shape == (B, W)
    assert torch.equal(dam, (~d["target_mask"]).int()), "decoder_attention_mask is 1 exactly on target positions"
    sentinels = set(sentinel_ids)
    for b in range(B):
        inp = (~d["input_mask"][b]).nonzero().flatten().tolist()
        tgt = (~d["target_mask"][b]).nonzero().flatten().tolist()
        assert inp == list(range(len(inp))), "input is a prefix"
        if tgt:
            assert tgt == list(range(tgt[0], tgt[0] + len(tgt))), "target is contiguous"
            assert tgt[0] >= len(inp)
            assert int(t[b, tgt[0]]) in sentinels, "target starts with a sentinel"
        used = set(inp) | set(tgt)
        assert all(int(t[b, p]) == pad for p in range(W) if p not in used)
        assert all(int(t[b, p]) != pad for p in used)
        if in_b is not None:
            assert len(inp) <= in_b[b] and len(tgt) <= tg_b[b]
            if tgt:
                assert tgt[0] == in_b[b], "the target starts at the input budget (official layout)"


def split(d, b):
    t = d["tensor"][b]
    return t[~d["input_mask"][b]].tolist(), t[~d["target_mask"][b]].tolist()


def test_official_fixture_and_our_output_share_the_format(tok):
    from safetensors import safe_open

    f = safe_open(str(IO), "pt")
    meta = f.metadata()
    sent = special_ids(tok).sentinels
    fixture = {m: {k: f.get_tensor(f"mm.in.{m}.{k}") for k in ("input_mask", "target_mask", "decoder_attention_mask")}
               for m in ("rgb@224", "tok_depth@224", "caption")}
    fixture["caption"]["tensor"] = f.get_tensor("mm.in.caption.tensor")
    # budgets (input, target): rgb (16, 0), tok_depth (8, 12), caption (10, 8)
    check_image_format(fixture["rgb@224"], 2, 196, [16, 16], [0, 0])
    check_image_format(fixture["tok_depth@224"], 2, 196, [8, 8], [12, 12])
    check_sequence_format(fixture["caption"], 2, sent, in_b=[10, 10], tg_b=[8, 8])

    names = ["rgb@224", "tok_depth@224", "caption"]
    masking = UnifiedMasking(names, "mix_mod7_all2all_rgb2all_a0.5", 36, 20, tok)
    captions = eval(meta["captions"])  # a repr()'d list of two strings written by the fixture's generator
    batch = {"rgb@224": f.get_tensor("vit.input"), "tok_depth@224": f.get_tensor("mm.in.tok_depth@224.tensor"),
             "caption": captions}
    budgets = Budgets(torch.zeros(2, dtype=torch.long), torch.full((2,), 34), torch.full((2,), 20),
                      torch.tensor([[16, 8, 10]] * 2), torch.tensor([[0, 12, 8]] * 2))
    ours = masking(batch, torch.Generator().manual_seed(1), budgets)
    assert list(ours) == names
    for m in names:
        assert set(ours[m]) == {"tensor", "input_mask", "target_mask", "decoder_attention_mask"}
        for k in ("input_mask", "target_mask", "decoder_attention_mask"):
            assert ours[m][k].dtype == fixture[m][k].dtype and ours[m][k].shape == fixture[m][k].shape
    assert ours["tok_depth@224"]["tensor"].dtype == torch.int64 and ours["tok_depth@224"]["tensor"].shape == (2, 14, 14)
    assert ours["rgb@224"]["tensor"] is batch["rgb@224"]
    check_image_format(ours["rgb@224"], 2, 196, [16, 16], [0, 0])
    check_image_format(ours["tok_depth@224"], 2, 196, [8, 8], [12, 12])
    check_sequence_format(ours["caption"], 2, sent, in_b=[10, 10], tg_b=[8, 8])
    assert ours["caption"]["tensor"].dtype == fixture["caption"]["tensor"].dtype

    # the fixture's caption 0 was fully masked: its 8-token target is the head of [S_1] caption [EOS] [S_2]
    ids0 = tok.encode(captions[0]).ids
    assert split(fixture["caption"], 0) == ([sent[1]], [sent[1]] + ids0[:7])


# --- budgets -----------------------------------------------------------------------------------------------------


def test_budgets_sum_to_totals_and_respect_caps():
    names = ["rgb@224", *TOKEN_MODS]  # no sequences: no tokenizer needed
    m = UnifiedMasking(names, one_component({n: 0.5 for n in names}, {n: 0.5 for n in TOKEN_MODS}), 128, 96)
    b = m.sample_budgets(3000, torch.Generator().manual_seed(0))
    assert (b.input.sum(1) == 128).all() and (b.target.sum(1) == 96).all()
    assert (b.input >= 0).all() and (b.target >= 0).all()
    assert (b.input + b.target <= 196).all(), "an image position is never both input and target"
    assert (b.target[:, 0] == 0).all(), "rgb has target alpha 0"

    ranged = UnifiedMasking(names, one_component({n: 0.5 for n in names}, {n: 0.5 for n in TOKEN_MODS}), (64, 128), (1, 50))
    b = ranged.sample_budgets(2000, torch.Generator().manual_seed(1))
    assert torch.equal(b.input.sum(1), b.num_input) and torch.equal(b.target.sum(1), b.num_target)
    assert b.num_input.min() == 64 and b.num_input.max() == 128 and b.num_target.min() == 1


def test_budget_fractions_match_dirichlet_mean_and_variance():
    alphas = [0.3, 0.6, 1.2, 2.4, 0.5]
    cfg = one_component(dict(zip(TOKEN_MODS, alphas)), dict(zip(TOKEN_MODS, reversed(alphas))))
    T = 60
    m = UnifiedMasking(TOKEN_MODS, cfg, T, T)
    b = m.sample_budgets(6000, torch.Generator().manual_seed(2))
    for budget, a in ((b.input, alphas), (b.target, alphas[::-1])):
        a = torch.tensor(a, dtype=torch.float64)
        mean = a / a.sum()
        var = mean * (1 - mean) / (a.sum() + 1)
        frac = budget.double() / T
        assert torch.allclose(frac.mean(0), mean, atol=0.012), (frac.mean(0), mean)
        # integer rounding adds at most 1/(4 T^2) of variance
        assert torch.allclose(frac.var(0), var, rtol=0.12, atol=1 / (4 * T * T)), (frac.var(0), var)


def test_dirichlet_sampler_matches_moments_for_tiny_and_huge_alphas():
    g = torch.Generator().manual_seed(3)
    a = torch.tensor([0.01, 0.1, 1000.0, 0.0])
    x = sample_dirichlet(a.expand(20000, -1), g)
    assert torch.allclose(x.sum(1), torch.ones(20000, dtype=torch.float64))
    assert (x[:, 3] == 0).all(), "alpha 0 gives exactly 0"
    mean = a / a.sum()
    assert torch.allclose(x.mean(0), mean.double(), atol=2e-4)


def test_mixture_weights_pick_components_and_alpha_zero_never_appears():
    cfg = load_alphas("mix_mod7_all2all_rgb2all_a0.5").to_dict()
    cfg = {"sampling_weights": [3.0, 1.0], "alphas_mixture": cfg}
    names = ["rgb@224", *TOKEN_MODS]
    cfg["alphas_mixture"] = {n: cfg["alphas_mixture"][n] for n in names}
    m = UnifiedMasking(names, cfg, 100, 100)
    g = torch.Generator().manual_seed(4)
    b = m.sample_budgets(4000, g)
    assert abs((b.component == 0).double().mean().item() - 0.75) < 0.025
    rgb2all = b.component == 0
    assert (b.input[rgb2all, 0] == 100).all() and (b.input[rgb2all, 1:] == 0).all()
    assert (b.target[:, 0] == 0).all()
    assert (b.input[~rgb2all, 1:].sum(0) > 0).all(), "in all2all every token modality gets input sometimes"

    # the masks agree: rgb2all samples show no token-modality input at all
    out = m(make_batch(names, 64, g), g, Budgets(*(t[:64] for t in b)))
    for n in TOKEN_MODS:
        assert out[n]["input_mask"][rgb2all[:64]].all()
    assert out["rgb@224"]["target_mask"].all()


def test_min_and_max_tokens_are_respected():
    names = ["tok_rgb@224", "tok_depth@224", "caption"]
    cfg = one_component({n: 0.5 for n in names}, {n: 0.5 for n in names})
    m = UnifiedMasking(names, cfg, 120, 120, _small_tok(), max_tokens={"tok_rgb@224": 10, "caption": 40},
                       min_tokens={"caption": 5, "tok_depth@224": 3})
    b = m.sample_budgets(3000, torch.Generator().manual_seed(5))
    assert (b.input[:, 0] <= 10).all() and (b.target[:, 0] <= 10).all()
    assert (b.input[:, 2] <= 40).all() and (b.input[:, 2] >= 5).all() and (b.target[:, 2] >= 5).all()
    assert (b.input[:, 1] >= 3).all() and (b.target[:, 1] >= 3).all()
    assert (b.input.sum(1) == 120).all() and (b.target.sum(1) == 120).all()
    assert (b.input[:, 0] == 10).double().mean() > 0.2, "a capped modality passes its overflow on"


def test_budgets_fall_short_only_when_tokens_run_out():
    # rgb2all: only rgb (196 patches) may be input, so 256 requested input tokens become 196
    cfg = one_component({"rgb@224": 1.0}, {"tok_depth@224": 0.5, "tok_rgb@224": 0.5})
    m = UnifiedMasking(["rgb@224", "tok_depth@224", "tok_rgb@224"], cfg, 256, 300)
    b = m.sample_budgets(200, torch.Generator().manual_seed(6))
    assert (b.input[:, 0] == 196).all() and (b.input[:, 1:] == 0).all()
    assert (b.target.sum(1) == 300).all() and (b.target <= 196).all()
    # two image modalities: 300 of 392 positions are input, so only 92 are left for targets
    two = ["tok_rgb@224", "tok_depth@224"]
    m = UnifiedMasking(two, one_component({n: 1.0 for n in two}, {n: 1.0 for n in two}), 300, 200)
    b = m.sample_budgets(500, torch.Generator().manual_seed(7))
    assert (b.input.sum(1) == 300).all() and (b.target.sum(1) == 92).all()
    assert (b.input + b.target == 196).all()


def _small_tok():
    return train_wordpiece(CAPTIONS, vocab_size=4400)


# --- masks -------------------------------------------------------------------------------------------------------


def test_image_masks_follow_budgets_and_are_uniform():
    names = ["tok_depth@224"]
    m = UnifiedMasking(names, one_component({names[0]: 1.0}, {names[0]: 1.0}), 30, 50)
    g = torch.Generator().manual_seed(8)
    B = 400
    b = m.sample_budgets(B, g)
    out = m(make_batch(names, B, g), g, b)
    d = out["tok_depth@224"]
    check_image_format(d, B, 196, b.input[:, 0].tolist(), b.target[:, 0].tolist())
    freq = (~d["input_mask"]).double().mean(0)  # every position equally likely to be input: 30/196
    assert abs(freq.mean().item() - 30 / 196) < 1e-9 and freq.std().item() < 0.04


def _pattern(inp, tgt, sentinels):
    """Regex over '<id>' tokens that the original sequence must match, given input and a possibly cut target."""
    s = set(sentinels)
    spans, cur, closed = {}, None, set()
    for t in tgt:
        if t in s:
            if cur is not None:
                closed.add(cur)
            cur = t
            spans[t] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inp:
        if t not in s:
            out.append(re.escape(f"<{t}>"))
        elif t in closed:
            out.extend(re.escape(f"<{x}>") for x in spans[t])
        elif t in spans:  # the cut span: what we have is its head
            out.extend(re.escape(f"<{x}>") for x in spans[t])
            out.append(r"(?:<\d+>)*")
        else:
            out.append(r"(?:<\d+>)+")
    return "".join(out)


def test_span_masking_round_trip(tok):
    ids = special_ids(tok)
    cfg = one_component({"caption": 1.0}, {"caption": 1.0})
    m = UnifiedMasking(["caption"], cfg, 20, 20, tok)
    g = torch.Generator().manual_seed(9)
    B = 96
    in_b = torch.randint(0, 25, (B, 1), generator=g)
    budgets = Budgets(torch.zeros(B, dtype=torch.long), in_b[:, 0], torch.full((B,), 256), in_b, torch.full((B, 1), 256))
    out = m({"caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(B)]}, g, budgets)["caption"]
    check_sequence_format(out, B, ids.sentinels, ids.pad, in_b=in_b[:, 0].tolist(), tg_b=[256] * B)
    n_full = 0
    for b in range(B):
        original = tok.encode(CAPTIONS[b % len(CAPTIONS)]).ids + [ids.eos]
        inp, tgt = split(out, b)
        if in_b[b] == 0:
            assert inp == [] and tgt == [ids.sentinels[1], *original, ids.sentinels[2]]
            continue
        assert merge_spans(inp, tgt, ids.sentinels) == original
        # sentinels are numbered 1, 2, ... in order and the target closes with the next one
        used = [t for t in inp if t in ids.sentinels]
        assert used == list(ids.sentinels[1 : len(used) + 1])
        assert tgt[-1] == ids.sentinels[len(used) + 1]
        n_full += len(used) == 0
    assert 0 < n_full < B


def test_truncated_targets_are_sentinel_aligned_slices(tok):
    ids = special_ids(tok)
    m = UnifiedMasking(["caption"], one_component({"caption": 1.0}, {"caption": 1.0}), 20, 20, tok)
    g = torch.Generator().manual_seed(10)
    B = 96
    in_b = torch.randint(1, 12, (B, 1), generator=g)
    tg_b = torch.randint(0, 9, (B, 1), generator=g)
    budgets = Budgets(torch.zeros(B, dtype=torch.long), in_b[:, 0], tg_b[:, 0], in_b, tg_b)
    captions = [CAPTIONS[3 - i % 2] for i in range(B)]  # long captions: most targets need cutting
    out = m({"caption": captions}, g, budgets)["caption"]
    check_sequence_format(out, B, ids.sentinels, ids.pad, in_b=in_b[:, 0].tolist(), tg_b=tg_b[:, 0].tolist())
    cut = 0
    for b in range(B):
        original = "".join(f"<{t}>" for t in tok.encode(captions[b]).ids + [ids.eos])
        inp, tgt = split(out, b)
        assert re.fullmatch(_pattern(inp, tgt, ids.sentinels), original), (inp, tgt)
        cut += len(tgt) == tg_b[b] > 0
    assert cut > B // 3


def test_keep_schemes_all_and_binary(tok):
    ids = special_ids(tok)
    caption = CAPTIONS[0]
    seq = tok.encode(caption).ids + [ids.eos]
    B = 64
    g = torch.Generator().manual_seed(11)
    budgets = Budgets(torch.zeros(B, dtype=torch.long), torch.full((B,), 50), torch.full((B,), 50),
                      torch.full((B, 1), 50), torch.full((B, 1), 50))
    for scheme in ("all", "binary"):
        cfg = one_component({"caption": 1.0}, {"caption": 1.0}, keep={"caption": scheme})
        out = UnifiedMasking(["caption"], cfg, 50, 50, tok)({"caption": [caption] * B}, g, budgets)["caption"]
        seen = set()
        for b in range(B):
            inp, tgt = split(out, b)
            if inp == seq:
                assert tgt == [ids.sentinels[1]]
                seen.add("kept")
            else:
                assert scheme == "binary" and inp == [ids.sentinels[1]] and tgt == [ids.sentinels[1], *seq, ids.sentinels[2]]
                seen.add("masked")
        assert seen == ({"kept"} if scheme == "all" else {"kept", "masked"})


def test_keep_all_shrinks_to_the_input_budget(tok):
    ids = special_ids(tok)
    caption = CAPTIONS[3]
    n = len(tok.encode(caption).ids) + 1
    B = 48
    cfg = one_component({"caption": 1.0}, {"caption": 1.0}, keep={"caption": "all"})
    budgets = Budgets(torch.zeros(B, dtype=torch.long), torch.full((B,), 6), torch.full((B,), 256),
                      torch.full((B, 1), 6), torch.full((B, 1), 256))
    out = UnifiedMasking(["caption"], cfg, 6, 256, tok)({"caption": [caption] * B}, torch.Generator().manual_seed(12), budgets)
    for b in range(B):
        inp, tgt = split(out["caption"], b)
        assert 1 <= len(inp) <= 6 < n
        assert merge_spans(inp, tgt, ids.sentinels) == tok.encode(caption).ids + [ids.eos]


def test_det_chunks_are_masked_box_by_box(tok):
    ids = special_ids(tok)
    boxes = [(1, 2, 10, 12, "person"), (5, 5, 30, 31, "dog"), (20, 3, 31, 9, "teddy bear"), (0, 20, 8, 30, "cat")]
    chunks = boxes_to_chunks(boxes, 32)
    chunk_ids = [tok.encode(c).ids for c in chunks]
    assert all(len(c) == 5 for c in chunk_ids)
    B = 64
    m = UnifiedMasking(["det"], one_component({"det": 1.0}, {"det": 1.0}), 20, 20, tok)
    g = torch.Generator().manual_seed(13)
    in_b = torch.randint(1, 22, (B, 1), generator=g)
    budgets = Budgets(torch.zeros(B, dtype=torch.long), in_b[:, 0], torch.full((B,), 256), in_b, torch.full((B, 1), 256))
    out = m({"det": [chunks] * B}, g, budgets)["det"]
    original = [t for c in chunk_ids for t in c] + [ids.eos]
    sent = set(ids.sentinels)
    for b in range(B):
        inp, tgt = split(out, b)
        assert merge_spans(inp, tgt, ids.sentinels) == original
        pieces, cur = [], None
        for t in tgt:
            if t in sent:
                cur = []
                pieces.append(cur)
            else:
                cur.append(t)
        for p in pieces:  # every masked span is whole boxes (5 tokens each), plus maybe the EOS chunk
            body = p[:-1] if p and p[-1] == ids.eos else p
            assert len(body) % 5 == 0 and all(body[i] == chunk_ids[0][0] or body[i] in {c[0] for c in chunk_ids} for i in range(0, len(body), 5))

    # chunks that do not fit max_tokens are dropped whole (a prefix of the boxes survives), EOS is kept
    small = UnifiedMasking(["det"], one_component({"det": 1.0}, {"det": 1.0}), 10, 10, tok, max_tokens={"det": 13})
    out = small({"det": [chunks]}, g, Budgets(torch.zeros(1, dtype=torch.long), torch.tensor([0]), torch.tensor([13]),
                                             torch.tensor([[0]]), torch.tensor([[13]])))["det"]
    assert split(out, 0) == ([], [ids.sentinels[1], *chunk_ids[0], *chunk_ids[1], ids.eos, ids.sentinels[2]])


def test_full_mod7_batch_is_seeded_and_well_formed(tok):
    ids = special_ids(tok)
    m = UnifiedMasking(MOD7, "mix_mod7_all2all_rgb2all_a0.5", 128, 128, tok)
    B = 16
    batch = make_batch(MOD7, B, torch.Generator().manual_seed(0))
    a = m(batch, torch.Generator().manual_seed(14))
    again = m(batch, torch.Generator().manual_seed(14))
    other = m(batch, torch.Generator().manual_seed(15))
    assert list(a) == MOD7
    for n in MOD7:
        for k in ("input_mask", "target_mask", "decoder_attention_mask"):
            assert torch.equal(a[n][k], again[n][k])
    assert any(not torch.equal(a[n]["input_mask"], other[n]["input_mask"]) for n in MOD7)
    for n in MOD7:
        if n in ("caption", "det"):
            check_sequence_format(a[n], B, ids.sentinels, ids.pad)
        else:
            check_image_format(a[n], B, 196)
    used_in = sum((~a[n]["input_mask"]).sum(1) for n in MOD7)
    assert (used_in <= 128).all() and (used_in > 0).all()


# --- config errors -----------------------------------------------------------------------------------------------


def test_shipped_alphas_load(tok):
    names = shipped_alphas()
    assert {"mix_mod7_all2all_rgb2all_a0.5", "mod7_rgb2all_a0.5", "mod7_all2all_a0.1", "mod7_all2all_a1.0"} <= set(names)
    for n in names:
        mix = load_alphas(n)
        assert set(mix.modalities) == set(MOD21 if "mod21" in n else MOD7), n
        assert mix.alphas["rgb@224"].target_alphas == (0.0,) * mix.num_components
    mod21 = load_alphas("mix_mod21_all2all_rgb2all_a0.5")
    assert mod21.alphas["t5_caption"].target_alphas == (0.0, 0.0)  # input-only: no decoder
    assert mod21.alphas["tok_dinov2_global"].input_alphas == (0.0, 0.5)
    # a model of a subset of the 21 (what the world can label) reads its own entries
    subset = [m for m in MOD21 if m not in ("human_poses", "t5_caption")]
    assert UnifiedMasking(subset, mod21, 64, 64, text_tokenizer=tok).names == subset
    official = load_alphas("mix_mod7_all2all_rgb2all_a0.5")
    assert official.num_components == 2 and official.sampling_weights is None
    assert official.alphas["rgb@224"].input_alphas == (1000.0, 0.5)
    assert official.alphas["caption"].keep == ("random", "random")
    bias = load_alphas("mix_mod7_caption_bias_a0.2_a1.0")
    assert bias.sampling_weights == (1.0, 1.0, 1.0) and bias.alphas["caption"].keep[0] == "all"
    assert load_alphas(bias.to_dict()).alphas == bias.alphas


GOOD = {"rgb@224": {"input_alphas": [1.0, 0.5], "target_alphas": [0.0, 0.0]},
        "tok_depth@224": {"input_alphas": [0.0, 0.5], "target_alphas": [0.5, 0.5]},
        "caption": {"input_alphas": [0.0, 0.5], "target_alphas": [0.5, 0.5], "keep": ["random", "all"]}}


def _with(mod, **entry):
    cfg = {k: dict(v) for k, v in GOOD.items()}
    cfg[mod] = {**cfg.get(mod, {}), **entry}
    return cfg


@pytest.mark.parametrize(
    "cfg, modality, needle",
    [
        (_with("tok_depth@224", input_alphas=[0.0, 0.5, 1.0]), "tok_depth@224", "has 3 values, expected 2"),
        (_with("caption", target_alphas=[-0.5, 0.5]), "caption", ">= 0"),
        (_with("tok_rgb@999", input_alphas=[1, 1], target_alphas=[1, 1]), "tok_rgb@999", "unknown modality"),
        (_with("rgb@224", target_alphas=[0.5, 0.0]), "rgb@224", "input-only"),
        (_with("caption", keep=["random", "sometimes"]), "caption", "keep"),
        (_with("caption", input_alpha=[1, 1]), "caption", "unknown keys"),
        (_with("tok_depth@224", target_alphas="lots"), "tok_depth@224", "list of numbers"),
    ],
)
def test_bad_alphas_name_file_and_modality(tmp_path, cfg, modality, needle):
    path = tmp_path / "alphas.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError) as e:
        load_alphas(path)
    msg = str(e.value)
    assert str(path) in msg and modality in msg and needle in msg


def test_bad_alphas_all_zero_component_and_weights(tmp_path):
    import yaml

    zero = {k: {**v, "input_alphas": [v["input_alphas"][0], 0.0]} for k, v in GOOD.items()}
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(zero))
    with pytest.raises(ValueError, match=r"zero.yaml(.|\n)*component 1: every modality has input_alphas\[1\] = 0"):
        load_alphas(path)
    with pytest.raises(ValueError, match="sampling_weights must be 2"):
        load_alphas({"sampling_weights": [1.0], "alphas_mixture": GOOD})
    with pytest.raises(FileNotFoundError, match="mix_mod7_all2all_rgb2all_a0.5"):
        load_alphas("no_such_mixture")


def test_masking_config_errors(tok):
    with pytest.raises(ValueError, match=r"no alphas for modalities \['det'\]"):
        UnifiedMasking(["caption", "det"], GOOD, 10, 10, tok)
    # without rgb, component 0 of GOOD has no input modality left
    with pytest.raises(ValueError, match=r"components \[0\] give every modality"):
        UnifiedMasking(["tok_depth@224", "caption"], GOOD, 10, 10, tok)
    with pytest.raises(ValueError, match="need text_tokenizer"):
        UnifiedMasking(["rgb@224", "caption"], GOOD, 10, 10)
    m = UnifiedMasking(["rgb@224", "tok_depth@224"], GOOD, 10, 10)
    with pytest.raises(KeyError, match="lacks modalities"):
        m({"rgb@224": torch.zeros(2, 3, 8, 8)}, torch.Generator())
    with pytest.raises(ValueError, match=r"expected \[B, 14, 14\]"):
        m({"rgb@224": torch.zeros(2, 3, 8, 8), "tok_depth@224": torch.zeros(2, 7, 7, dtype=torch.long)}, torch.Generator())


def test_span_masking_matches_the_per_sample_reference_in_distribution(tok):
    """Batched retries (8, then 56 decays at a time) give the same keep/decay statistics as one-by-one retries."""
    import random

    from benchmarks.masking import PerSampleMasking

    caption = CAPTIONS[3]
    cfg = one_component({"caption": 1.0}, {"caption": 1.0})
    B, in_b = 2000, 5
    ref = PerSampleMasking(["caption"], cfg, in_b, 256, tok)
    random.seed(0)
    torch.manual_seed(0)
    ref_len = torch.tensor([int((~ref._sequence(caption, 256, in_b, 256, "random")["input_mask"]).sum()) for _ in range(B)])
    m = UnifiedMasking(["caption"], cfg, in_b, 256, tok)
    budgets = Budgets(torch.zeros(B, dtype=torch.long), torch.full((B,), in_b), torch.full((B,), 256),
                      torch.full((B, 1), in_b), torch.full((B, 1), 256))
    out = m({"caption": [caption] * B}, torch.Generator().manual_seed(16), budgets)["caption"]
    ours = (~out["input_mask"]).sum(1).double()
    # input lengths 1..5: compare the histograms
    h_ref = torch.bincount(ref_len, minlength=6)[1:6].double() / B
    h_ours = torch.bincount(ours.long(), minlength=6)[1:6].double() / B
    assert torch.allclose(h_ref, h_ours, atol=0.04), (h_ref, h_ours)  # ~3.5 sigma of a difference of two


def test_pretokenized_sequences_mask_like_strings(tok):
    names = ["caption", "det"]
    m = UnifiedMasking(names, one_component({n: 1.0 for n in names}, {n: 1.0 for n in names}), 30, 30, tok)
    B = 12
    strings = make_batch(names, B, torch.Generator().manual_seed(0))
    ids = {
        "caption": [torch.tensor(tok.encode(c).ids) if i % 2 else tok.encode(c).ids for i, c in enumerate(strings["caption"])],
        "det": [[tok.encode(c).ids for c in chunks] for chunks in strings["det"]],
    }
    a = m(strings, torch.Generator().manual_seed(17))
    b = m(ids, torch.Generator().manual_seed(17))
    for n in names:
        for k in a[n]:
            assert torch.equal(a[n][k], b[n][k]), (n, k)
    with pytest.raises(TypeError, match=r"batch\['caption'\]\[0\]"):
        m({"caption": [[1.5, 2.5]] * B, "det": ids["det"]}, torch.Generator())


def test_trimming_sequence_padding_keeps_the_loss_and_gradients(tok):
    names = ["tok_depth@224", "caption", "det"]
    B = 8
    masking = UnifiedMasking(names, one_component({n: 1.0 for n in names}, {n: 1.0 for n in names}), 48, 48, tok)
    batch = masking(make_batch(names, B, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(3))
    trimmed = trim_sequence_padding(batch, names, names, 48, 48)
    for n in ("caption", "det"):
        full_w, w = batch[n]["tensor"].shape[1], trimmed[n]["tensor"].shape[1]
        assert full_w == 2 * (256 + 1) and w < 100  # 48-token budgets use a small part of the 514 columns
        used = ~batch[n]["input_mask"] | ~batch[n]["target_mask"]
        assert not used[:, w:].any() and used[:, w - 1].any()  # cut right after the last used column
        for k in ("tensor", "input_mask", "target_mask", "decoder_attention_mask"):
            assert torch.equal(trimmed[n][k], batch[n][k][:, :w])
    assert trimmed["tok_depth@224"] is batch["tok_depth@224"]

    torch.manual_seed(0)
    model = create_model("fm_pico_2e_2d_swiglu_nobias", domains_in=names, domains_out=names,
                         vocab_sizes={"tok_depth@224": 4096, "caption": tok.get_vocab_size(), "det": tok.get_vocab_size()})
    grads, losses = [], []
    for b in (batch, trimmed):
        model.zero_grad()
        loss, mod_loss = model(b, 48, 48, rng=random.Random(0))
        loss.backward()
        losses.append((loss.item(), {k: v.item() for k, v in mod_loss.items()}))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    assert losses[0][1] == pytest.approx(losses[1][1], abs=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k

    # budgets wider than what is left after the cut: the full layout is kept, so the model's shapes stay the same
    assert trim_sequence_padding(batch, ["caption"], ["caption"], 300, 48) is batch


def test_embedding_sequences_give_random_valid_positions_as_input_and_never_padding():
    names = ["tok_depth@224", "t5_caption"]
    alphas = {"tok_depth@224": {"input_alphas": [1.0], "target_alphas": [1.0]},
              "t5_caption": {"input_alphas": [1.0], "target_alphas": [0.0]}}
    m = UnifiedMasking(names, alphas, 40, 16)
    g = torch.Generator().manual_seed(0)
    lengths = [5, 30, 77, 12]
    batch = {"tok_depth@224": torch.randint(0, 100, (4, 14, 14), generator=g),
             "t5_caption": [torch.randn(n, 4096, generator=g) for n in lengths]}
    budgets = m.sample_budgets(4, torch.Generator().manual_seed(1))
    out = m(batch, torch.Generator().manual_seed(2), budgets=budgets)["t5_caption"]
    assert out["tensor"].shape == (4, 77, 4096) and out["input_mask"].shape == (4, 77)
    assert out["target_mask"].all()  # input-only
    for i, n in enumerate(lengths):
        visible = (~out["input_mask"][i]).nonzero().flatten()
        assert len(visible) == min(int(budgets.input[i, 1]), n) and (visible < n).all()
        assert torch.equal(out["tensor"][i, :n], batch["t5_caption"][i]) and not out["tensor"][i, n:].any()
    # which positions are visible is random, not the first ones
    many = m({k: (v.repeat(8, 1, 1) if torch.is_tensor(v) else v * 8) for k, v in batch.items()},
             torch.Generator().manual_seed(3))["t5_caption"]["input_mask"]
    assert (~many[:, 60:]).any()
    with pytest.raises(ValueError, match=r"batch\['t5_caption'\]\[0\] must be a float tensor \[length, 4096\]"):
        m({**batch, "t5_caption": [torch.randn(5, 8)] * 4}, torch.Generator().manual_seed(2))
