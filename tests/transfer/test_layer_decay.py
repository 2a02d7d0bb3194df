"""The registered mmengine layer-decay constructor: groups, rates and weight decay per parameter."""
from __future__ import annotations

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from transfer.adapter import build_encoder
from transfer.layer_decay import FourMLayerDecayOptimizerConstructor  # noqa: F401  (registers it)


class _Segmentor(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.backbone = encoder
        self.decode_head = nn.Sequential(nn.Conv2d(encoder.dim, 4, 1), nn.BatchNorm2d(4))


def _cfg(**paramwise):
    return dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
                constructor="FourMLayerDecayOptimizerConstructor", paramwise_cfg=paramwise)


def test_rates_follow_depth_and_cover_every_parameter_once():
    model = _Segmentor(build_encoder("random", "fm_nano_2e_2d_swiglu_nobias"))
    wrapper = build_optim_wrapper(model, _cfg(layer_decay_rate=0.5))
    seen = {}
    for g in wrapper.optimizer.param_groups:
        for name, p in zip(g["names"], g["params"]):
            assert name not in seen
            seen[name] = g
    assert set(seen) == {n for n, _ in model.named_parameters()}
    # depth 2 inferred: embeddings 0.5**3, block0 0.5**2, block1 0.5, final norm and head 1.
    assert seen["backbone.encoder_embeddings.rgb@224.proj.weight"]["lr"] == pytest.approx(1e-3 * 0.125)
    assert seen["backbone.encoder.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-3 * 0.25)
    assert seen["backbone.encoder.1.mlp.fc1.weight"]["lr"] == pytest.approx(1e-3 * 0.5)
    assert seen["decode_head.0.weight"]["lr"] == pytest.approx(1e-3)
    assert seen["decode_head.0.weight"]["weight_decay"] == 0.05
    assert seen["backbone.encoder.1.mlp.fc1.weight"]["weight_decay"] == 0.05
    for name in ("decode_head.0.bias", "decode_head.1.weight", "backbone.encoder.0.norm1.weight"):
        assert seen[name]["weight_decay"] == 0.0


def test_explicit_num_layers_wins_and_step_moves_weights():
    model = _Segmentor(build_encoder("random", "fm_nano_2e_2d_swiglu_nobias"))
    wrapper = build_optim_wrapper(model, _cfg(layer_decay_rate=0.5, num_layers=4))
    lrs = {g["layer_id"]: g["lr"] for g in wrapper.optimizer.param_groups}
    assert lrs[0] == pytest.approx(1e-3 * 0.5**5)
    assert lrs[5] == pytest.approx(1e-3)
    before = model.backbone.encoder[0].attn.qkv.weight.detach().clone()
    x = torch.randn(2, 3, 224, 224)
    feats = model.backbone.forward_features(x)
    loss = feats.pow(2).mean()
    wrapper.update_params(loss)
    assert not torch.equal(before, model.backbone.encoder[0].attn.qkv.weight)


def test_bad_paramwise_cfg_names_the_key():
    model = _Segmentor(build_encoder("random", "fm_nano_2e_2d_swiglu_nobias"))
    with pytest.raises(ValueError, match="layer_decay_rate"):
        build_optim_wrapper(model, _cfg(decay_rate=0.5))
    with pytest.raises(ValueError, match="num_layers"):
        build_optim_wrapper(nn.Linear(2, 2), dict(_cfg(layer_decay_rate=0.5)))
