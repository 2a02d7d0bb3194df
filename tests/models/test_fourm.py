"""Behaviour of the FourM model beyond the fixture: losses, encoder consistency, masks, gradients."""
import random

import pytest
import torch
from safetensors.torch import load_file

from fourm.models import create_model, load_encoder, load_pretrained
from fourm.models.parity import fixture_batch


@pytest.fixture(scope="module")
def official(official_fixture_dir):
    return load_pretrained(official_fixture_dir / "tiny_4m7.safetensors").eval(), load_file(
        str(official_fixture_dir / "tiny_4m7_io.safetensors"))


def test_token_loss_is_the_token_weighted_mean(official):
    model, io = official
    with torch.no_grad():
        l_mod, ml = model(fixture_batch(io), 36, 21, loss_type="mod", rng=random.Random(0))
        l_tok, _ = model(fixture_batch(io), 36, 21, loss_type="tok", rng=random.Random(0))
    n_cap, n_dep = io["mm.logit_targets.caption"].numel(), io["mm.logit_targets.tok_depth@224"].numel()
    expected = (ml["caption"] * n_cap + ml["tok_depth@224"] * n_dep) / (n_cap + n_dep)
    assert torch.allclose(l_tok, expected, atol=1e-6)
    assert torch.allclose(l_mod, (ml["caption"] + ml["tok_depth@224"]) / 2)
    assert not torch.allclose(l_mod, l_tok)


def test_loss_does_not_depend_on_decoder_order(official):
    model, io = official
    with torch.no_grad():
        losses = {model(fixture_batch(io), 36, 21, rng=random.Random(s))[0].item() for s in range(6)}
    assert max(losses) - min(losses) < 1e-6


def test_encoder_view_equals_full_model_encoder_with_all_rgb_visible(official, official_fixture_dir):
    model, io = official
    enc = load_encoder(official_fixture_dir / "tiny_4m7.safetensors").eval()
    x = io["vit.input"]
    mask = torch.zeros(2, 196, dtype=torch.bool)
    with torch.no_grad():
        full, pad = model.encode({"rgb@224": {"tensor": x, "input_mask": mask}}, 196)
        view = enc(x)
    assert not pad.any()
    assert torch.allclose(full, view, atol=1e-6)


def test_padded_query_rows_do_not_produce_nan(official):
    model, io = official
    batch = fixture_batch(io)
    with torch.no_grad():
        r = model(batch, 40, 30, return_all=True, rng=random.Random(0))  # more slots than valid tokens
    assert torch.isfinite(r["dec_output"]).all() and torch.isfinite(r["enc_output"]).all()
    assert (r["dec_mod_mask"] == -1).any()


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(official):
    _, io = official
    torch.manual_seed(0)
    model = create_model("fm_nano_2e_2d_swiglu_nobias", domains_in=["rgb@224", "tok_depth@224", "caption"],
                         domains_out=["tok_depth@224", "caption"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = fixture_batch(io)
    losses = []
    for _ in range(15):
        loss, _ = model(batch, 36, 21, rng=random.Random(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("encoder."))


def test_decoder_mask_semantics():
    model = create_model("fm_nano_2e_2d_gelu")
    # two groups: an image group of 3 tokens ([3,0,0]) then a causal sequence of 2 ([1,1])
    dam = torch.tensor([[3, 0, 0, 1, 1]])
    mods = torch.tensor([[5, 5, 5, 5, 5]], dtype=torch.int16)
    m = model.adapt_decoder_attention_mask(dam, mods)[0]
    allowed = ~m
    assert allowed[:3, :3].all() and not allowed[:3, 3:].any()
    assert allowed[3, :4].all() and not allowed[3, 4]
    assert allowed[4].all()
    sep = model.adapt_decoder_attention_mask(dam, torch.tensor([[1, 1, 1, 2, 2]], dtype=torch.int16))[0]
    assert not (~sep)[3, :3].any()
