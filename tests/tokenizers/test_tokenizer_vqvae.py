import math

import pytest
import torch
import torch.nn.functional as F

from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig


def _batch(modality: str, n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if modality == "rgb":
        return torch.rand(n, 3, size, size, generator=g)
    if modality == "depth":
        d = 0.5 + 9 * torch.rand(n, 1, size, size, generator=g)
        d[:, :, :2] = 0  # a strip without depth
        return d
    if modality == "normal":
        return F.normalize(torch.randn(n, 3, size, size, generator=g), dim=1)
    return torch.randint(1, 15, (n, size, size), generator=g)


@pytest.mark.parametrize("modality", ["rgb", "depth", "normal", "semseg"])
def test_encode_decode_shapes_dtypes_and_vocab(modality, tiny_config):
    torch.manual_seed(0)
    model = VQVAE(tiny_config(modality)).eval()
    x = _batch(modality)
    tokens = model.encode(x)
    assert tokens.shape == (4, 8, 8) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < model.vocab_size == 64
    y = model.decode(tokens)
    assert y.shape == x.shape
    if modality == "semseg":
        assert y.dtype == torch.int64 and int(y.min()) >= 1 and int(y.max()) < 15  # never the ignored id 0
    elif modality == "normal":
        assert torch.allclose(y.norm(dim=1), torch.ones(4, 32, 32), atol=1e-4)
    elif modality == "depth":
        assert y.dtype == torch.float32 and float(y.min()) >= model.config.depth_min - 1e-5
    else:
        assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_4m_geometry_gives_14x14_tokens():
    cfg = VQVAEConfig(modality="depth", image_size=224, channels=(4, 4, 4, 4), code_dim=4, codebook_size=8192)
    assert cfg.downsample == 16 and cfg.grid == 14
    tokens = VQVAE(cfg).eval().encode(torch.rand(1, 1, 224, 224) * 5 + 0.5)
    assert tokens.shape == (1, 14, 14)


def test_bad_config_and_input_give_clear_errors():
    with pytest.raises(ValueError, match="num_classes"):
        VQVAEConfig(modality="semseg")
    with pytest.raises(ValueError, match="not divisible"):
        VQVAEConfig(image_size=60, channels=(8, 8, 8))
    with pytest.raises(ValueError, match="no tokenizer for modality .lidar.: use one of"):
        VQVAEConfig(modality="lidar")
    model = VQVAE(VQVAEConfig(image_size=32, channels=(8, 8)))
    with pytest.raises(ValueError, match="not divisible by 4"):
        model.encode(torch.rand(1, 1, 30, 32))


def test_depth_adapter_is_log_normalised_and_invertible(tiny_config):
    model = VQVAE(tiny_config("depth", depth_min=0.5, depth_max=20.0))
    a = model.adapter
    d = torch.tensor([0.5, 1.0, math.sqrt(10.0), 20.0]).view(1, 1, 2, 2)
    z = a.to_input(d)
    assert torch.allclose(z.view(-1)[[0, 3]], torch.tensor([-1.0, 1.0]))
    # log spacing: sqrt(0.5 * 20) = sqrt(10) sits exactly in the middle
    assert abs(float(z.view(-1)[2])) < 1e-6
    assert torch.allclose(a.from_output(z), d, rtol=1e-5)
    # invalid pixels are excluded from the loss
    target = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    out = a.to_input(torch.tensor([5.0, 2.0]).view(1, 1, 1, 2))
    assert float(a.loss(out, target)) < 1e-6


@pytest.mark.parametrize("modality", ["depth", "semseg"])
def test_loss_decreases_on_a_fixed_batch(modality, tiny_config):
    torch.manual_seed(0)
    model = VQVAE(tiny_config(modality)).train()
    if modality == "semseg":  # a learnable map: blocks of classes
        x = (torch.arange(32).view(1, 1, 32) // 8 + torch.arange(32).view(1, 32, 1) // 16 * 4 + 1).expand(2, 32, 32)
    else:  # a smooth ramp per image
        x = (torch.linspace(1, 8, 32).view(1, 1, 1, 32) * torch.tensor([1.0, 0.7]).view(2, 1, 1, 1)).expand(2, 1, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        out = model(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["recon_loss"].detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses[::10]
