import json
import struct

import pytest
import torch

from fourm.tokenizers.checkpoint import (
    config_from_metadata,
    latest_step,
    load_tokenizer,
    load_training_checkpoint,
    save_tokenizer,
    save_training_checkpoint,
)
from fourm.tokenizers.vqvae import VQVAE


def _train_a_few_steps(model, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.config.modality == "semseg":
        x = torch.randint(1, 15, (2, 32, 32), generator=g)
    else:
        x = 0.5 + 5 * torch.rand(2, 1, 32, 32, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        out = model(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return opt, x


def test_checkpoint_reloads_bit_exactly_with_official_metadata_convention(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = VQVAE(tiny_config("semseg")).train()
    _, x = _train_a_few_steps(model)
    path = tmp_path / "tok.safetensors"
    save_tokenizer(model, path)

    # metadata: every config value stored as str(value), like the official 4M checkpoints
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    meta = json.loads(path.read_bytes()[8 : 8 + n])["__metadata__"]
    assert meta["channels"] == "(8, 16)" and meta["modality"] == "semseg" and meta["ema_decay"] == "None"
    assert config_from_metadata(meta) == model.config.to_dict()

    loaded = load_tokenizer(path)
    assert loaded.config == model.config
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == lsd.keys()
    assert all(torch.equal(sd[k], lsd[k]) for k in sd)  # includes the quantizer's idle_steps buffer
    model.eval()
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    # a run folder is accepted in place of the file
    (tmp_path / "run").mkdir()
    save_tokenizer(model, tmp_path / "run" / "tokenizer.safetensors")
    assert load_tokenizer(tmp_path / "run").config == model.config


def test_channels_last_weights_store_contiguous_and_compute_the_same(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = VQVAE(tiny_config("depth")).eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    weight = lambda m: m.get_submodule(convs[0]).weight  # noqa: E731 (one input channel: both layouts agree)
    assert weight(model).is_contiguous(memory_format=torch.channels_last) and not weight(model).is_contiguous()
    save_tokenizer(model, tmp_path / "tok.safetensors")
    loaded = load_tokenizer(tmp_path / "tok.safetensors")  # safetensors refuses non-contiguous tensors
    assert weight(loaded).is_contiguous(memory_format=torch.channels_last)
    # the same network in the default layout: the same latents up to float rounding, the same token ids
    plain = VQVAE(tiny_config("depth")).eval().to(memory_format=torch.contiguous_format)
    plain.load_state_dict(model.state_dict())
    assert weight(plain).is_contiguous()
    x = 0.5 + 5 * torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.encoder(model.adapter.to_input(x)), plain.encoder(plain.adapter.to_input(x)))
    assert torch.equal(model.encode(x), plain.encode(x))


def test_training_state_resumes_optimizer_and_rng(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = VQVAE(tiny_config("depth")).train()
    opt, _ = _train_a_few_steps(model, steps=2)
    torch.manual_seed(123)
    save_training_checkpoint(tmp_path, model, opt, 7, {"train_seconds": 1.5})
    expected_draw = torch.rand(3)
    assert latest_step(tmp_path) == 7
    loaded, state = load_training_checkpoint(tmp_path, 7)
    assert state["step"] == 7 and state["train_seconds"] == 1.5
    torch.set_rng_state(state["torch_rng"])
    assert torch.equal(torch.rand(3), expected_draw)
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # a checkpoint whose state file is missing does not count
    (tmp_path / "step_000009.safetensors").write_bytes((tmp_path / "step_000007.safetensors").read_bytes())
    assert latest_step(tmp_path) == 7
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match="tokenize train"):
        load_tokenizer(tmp_path / "missing.safetensors")
