"""The analytic FLOPs of a 4M training step agree with torch's FLOP counter."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.mfu import explicit_attention, step_flops, step_inputs
from fourm.models.factory import create_model


@pytest.mark.parametrize("name,gated", [("fm_pico_2e_2d_swiglu_nobias", True), ("fm_nano_2e_2d_gelu", False)])
def test_step_flops_match_the_flop_counter(name, gated):
    torch.manual_seed(0)
    model = create_model(name, domains_in=["rgb@224", "tok_depth@224"], domains_out=["tok_depth@224"]).train()
    assert model.config["gated_mlp"] == gated
    batch, n_enc, n_dec = 2, 40, 24
    inputs = step_inputs(model, batch, n_enc, n_dec)
    with explicit_attention(), FlopCounterMode(display=False) as counter:
        loss, _ = model(inputs, n_enc, n_dec)
        loss.backward()
    vocab = model.decoder_embeddings["tok_depth@224"].vocab_size
    ours = step_flops(model.config, batch, n_enc, n_dec, n_enc, {"tok_depth@224": (n_dec, vocab)})
    assert ours == counter.get_total_flops()  # every matmul of forward and backward, exactly
