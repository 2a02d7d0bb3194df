"""Official-format checkpoint I/O: strict loading, clear errors, our own checkpoints in the same format."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from fourm.models import (CheckpointError, config_for, create_model, load_encoder, load_pretrained,
                          save_checkpoint, transformer_parameters)
from fourm.models.checkpoint import parse_metadata, read_checkpoint


@pytest.fixture(scope="module")
def ckpt(official_fixture_dir):
    return official_fixture_dir / "tiny_4m7.safetensors"


def test_metadata_parses_to_the_official_config(ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        cfg = parse_metadata(f.metadata())
    assert cfg["dim"] == 8 and cfg["num_heads"] == 4 and cfg["gated_mlp"] is True and cfg["act_layer"] == "SiLU"
    assert cfg["domains_out"] == ["caption", "det", "tok_clip@224", "tok_depth@224", "tok_normal@224", "tok_rgb@224", "tok_semseg@224"]


def test_load_pretrained_is_strict_and_exact(ckpt):
    model = load_pretrained(ckpt)
    state = load_file(str(ckpt))
    ours = model.state_dict()
    assert set(ours) == set(state)
    assert all(torch.equal(ours[k], state[k]) for k in state)
    # tied modality embeddings: one parameter shared by encoder and decoder
    assert model.encoder_embeddings["caption"].mod_emb is model.decoder_embeddings["caption"].mod_emb
    # untied decoder heads, zero LayerNorm bias buffers
    assert not torch.equal(model.decoder_embeddings["caption"].to_logits.weight, model.decoder_embeddings["caption"].token_emb.weight)
    assert "encoder.0.norm1.bias" in dict(model.named_buffers())


def test_encoder_view_loads_only_encoder_keys(ckpt):
    enc = load_encoder(ckpt)
    state = load_file(str(ckpt))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(k.startswith("decoder") for k in enc.state_dict())


def test_missing_keys_are_named(ckpt, tmp_path):
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    state = load_file(str(ckpt))
    del state["encoder.1.mlp.fc3.weight"]
    state["head.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(bad)
    msg = str(e.value)
    assert "encoder.1.mlp.fc3.weight" in msg and "head.weight" in msg and str(bad) in msg


def test_foreign_safetensors_without_config(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(CheckpointError, match="no 4M config"):
        load_pretrained(p)


def test_corrupt_file(ckpt, tmp_path):
    p = tmp_path / "truncated.safetensors"
    p.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_pretrained(p)


def test_unknown_modality_in_config(ckpt, tmp_path):
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = dict(f.metadata())
    meta["domains_in"] = str(["rgb@224", "tok_thermal@224"])
    p = tmp_path / "unknown_mod.safetensors"
    save_file(load_file(str(ckpt)), str(p), metadata=meta)
    with pytest.raises(CheckpointError, match="tok_thermal@224"):
        load_pretrained(p)
    with pytest.raises(KeyError, match="unknown modalities"):
        create_model("fm_nano_2e_2d_gelu", domains_in=["rgb@224", "lidar"])


def test_hub_id_offline_says_pass_a_local_path(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(CheckpointError, match="local path"):
        load_pretrained("EPFL-VILAB/4M-7_B_CC12M")


def test_missing_path():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained("/nonexistent/model.safetensors")


def test_our_checkpoints_roundtrip_in_the_official_format(tmp_path):
    torch.manual_seed(0)
    model = create_model("fm_nano_2e_2d_swiglu_nobias")
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra_metadata={"step": 7})
    again = load_pretrained(path)
    assert again.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    enc = load_encoder(path, modality=["rgb@224", "tok_depth@224"])
    assert set(enc.encoder_embeddings) == {"rgb@224", "tok_depth@224"}


def test_vocab_sizes_override_sizes_the_token_tables_and_roundtrips(tmp_path):
    vocab = {"tok_depth@224": 256, "caption": 4000}
    model = create_model("fm_nano_2e_2d_swiglu_nobias", vocab_sizes=vocab)
    assert model.encoder_embeddings["tok_depth@224"].token_emb.weight.shape == (256, 64)
    assert model.decoder_embeddings["tok_depth@224"].to_logits.weight.shape == (256, 64)
    assert model.decoder_embeddings["caption"].to_logits.weight.shape == (4000, 64)
    assert model.decoder_embeddings["tok_rgb@224"].to_logits.weight.shape == (16384, 64)  # not overridden: official
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    again = load_pretrained(path)
    assert again.config["vocab_sizes"] == vocab
    enc = load_encoder(path, modality=["rgb@224", "tok_depth@224"])
    assert enc.encoder_embeddings["tok_depth@224"].token_emb.weight.shape == (256, 64)
    assert torch.equal(enc.encoder_embeddings["tok_depth@224"].token_emb.weight,
                       model.encoder_embeddings["tok_depth@224"].token_emb.weight)
    # the official format is untouched when no override is set: the key is not written at all
    plain = save_checkpoint(create_model("fm_nano_2e_2d_swiglu_nobias"), tmp_path / "plain.safetensors")
    assert "vocab_sizes" not in read_checkpoint(plain)[1]
    with pytest.raises(ValueError, match="not in domains_in/domains_out"):
        create_model("fm_nano_2e_2d_swiglu_nobias", vocab_sizes={"tok_foo@224": 8})
    with pytest.raises(ValueError, match="only token modalities"):
        create_model("fm_nano_2e_2d_swiglu_nobias", vocab_sizes={"rgb@224": 8})


@pytest.mark.parametrize("name,expected", [
    ("fm_base_12e_12d_swiglu_nobias", 198e6), ("fm_large_24e_24d_swiglu_nobias", 705e6), ("fm_xlarge_24e_24d_swiglu_nobias", 2.8e9),
])
def test_official_sizes_match_published_parameter_counts(name, expected):
    with torch.device("meta"):
        model = create_model(name)
    n = transformer_parameters(model)
    assert abs(n - expected) / expected < 0.01, f"{name}: {n / 1e6:.1f}M transformer parameters, published {expected / 1e6:.0f}M"


def test_factory_names_and_variants():
    cfg = config_for("fm_base_12e_12d_swiglu_qknorm_nobias")
    assert cfg["qk_norm"] and cfg["gated_mlp"] and not cfg["qkv_bias"] and cfg["dim"] == 768
    assert config_for("fm_large_24e_24d_gelu")["qkv_bias"] is True
    with pytest.raises(ValueError, match="unknown model"):
        config_for("fm_huge_32e_32d_gelu")
    with torch.device("meta"):
        m = create_model("fm_tiny_6e_6d_swiglu_qknorm_nobias")
    assert "encoder.0.attn.q_norm.weight" in m.state_dict()
