"""The MLP VQ-VAE of vectors (4M-21 global embeddings: 16 tokens each; pose parameters), against the mean vector."""
from __future__ import annotations

import pytest
import torch

from fourm.tokenizers.mlp_vqvae import MLPVQVAE, MLPVQVAEConfig, train_vectors, vector_metrics


def _embeddings(n: int, seed: int, dim: int = 64) -> torch.Tensor:
    """Vectors on an 8-dimensional manifold, as image embeddings of one domain are."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(8, dim, generator=torch.Generator().manual_seed(0))
    return torch.tanh(torch.randn(n, 8, generator=g) @ a) * 3 + 1


def test_global_embedding_tokens_reconstruct_far_better_than_the_mean():
    train, val = _embeddings(512, 1), _embeddings(128, 2)
    model = MLPVQVAE(MLPVQVAEConfig(dim=64, num_tokens=16, hidden=128, code_dim=16, codebook_size=64, restart_after=20))
    losses = train_vectors(model, train, steps=300, batch_size=64)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    tokens = model.encode(val)
    assert tokens.shape == (128, 16) and tokens.dtype == torch.long and int(tokens.max()) < 64
    ours = vector_metrics(model.decode(tokens), val, train.mean(0))
    mean = vector_metrics(train.mean(0).expand_as(val), val, train.mean(0))
    print(ours, mean)
    assert ours["cosine"] > 0.9 and ours["mse"] < 0.3 * mean["mse"]  # measured 0.915 and 0.19x (mean: cosine 0.384)
    assert mean["centered_cosine"] == pytest.approx(0.0, abs=1e-6) and ours["centered_cosine"] > 0.8


def test_pose_parameters_round_trip_through_tokens():
    g = torch.Generator().manual_seed(0)
    poses = torch.cat([torch.randn(400, 10, generator=g), torch.rand(400, 12, generator=g) * 2 - 1], 1)  # betas, rot, cam
    model = MLPVQVAE(MLPVQVAEConfig(dim=22, num_tokens=8, hidden=128, code_dim=16, codebook_size=128, restart_after=20,
                                    token_modality="human_poses"))
    train_vectors(model, poses[:320], steps=300)
    ours = vector_metrics(model.decode(model.encode(poses[320:])), poses[320:])
    mean = vector_metrics(poses[:320].mean(0).expand(80, -1), poses[320:])
    print(ours, mean)
    assert ours["mse"] < 0.6 * mean["mse"]


def test_config_errors():
    with pytest.raises(ValueError, match="num_tokens and depth must be >= 1"):
        MLPVQVAEConfig(num_tokens=0)


def test_a_vector_tokenizer_saves_and_loads_through_the_tokenizer_checkpoint(tmp_path):
    from fourm.tokenizers.checkpoint import load_tokenizer, save_tokenizer

    x = _embeddings(64, 3)
    model = MLPVQVAE(MLPVQVAEConfig(dim=64, hidden=64, code_dim=8, codebook_size=32, modality="imagebind_global",
                                    token_modality="tok_imagebind_global"))
    train_vectors(model, x, steps=20, batch_size=32)
    save_tokenizer(model, tmp_path / "tokenizer.safetensors")
    back = load_tokenizer(tmp_path)
    assert isinstance(back, MLPVQVAE) and back.config == model.config and back.config.grid == 4
    assert torch.equal(back.encode(x), model.encode(x))
    assert torch.equal(back.decode(model.encode(x)), model.decode(model.encode(x)))
