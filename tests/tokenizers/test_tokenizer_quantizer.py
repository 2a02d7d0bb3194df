import torch
import torch.nn.functional as F

from fourm.tokenizers.quantizer import VectorQuantizer, codebook_perplexity


def test_lookup_is_cosine_nearest_and_scale_invariant():
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 6)
    z = torch.randn(2, 6, 3, 4)
    vq.eval()
    _, idx, _, _ = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    sims = F.normalize(flat, dim=-1) @ F.normalize(vq.codebook, dim=-1).t()
    assert torch.equal(idx.reshape(-1), sims.argmax(-1))
    _, idx_scaled, _, _ = vq(z * 7.5)  # cosine lookup ignores the norm
    assert torch.equal(idx, idx_scaled)
    assert torch.equal(vq.lookup(flat), idx.reshape(-1))


def test_straight_through_gives_unit_codes_and_encoder_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).eval()
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    z_q, idx, loss, _ = vq(z)
    expected = F.normalize(vq.codebook, dim=-1)[idx.reshape(-1)]
    assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 4), expected, atol=1e-6)
    (z_q.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0  # learned codebook


def test_embed_inverts_indices_and_rejects_out_of_range():
    vq = VectorQuantizer(8, 3)
    idx = torch.tensor([[[0, 7], [3, 3]]])
    q = vq.embed(idx)
    assert q.shape == (1, 3, 2, 2)
    assert torch.equal(vq.lookup(q.permute(0, 2, 3, 1).reshape(-1, 3)), idx.reshape(-1))
    try:
        vq.embed(torch.tensor([[[8]]]))
    except ValueError as e:
        assert "[0, 8)" in str(e)
    else:
        raise AssertionError("out-of-range id accepted")


def test_ema_codebook_moves_towards_assigned_mean_without_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 3, ema_decay=0.5, restart_after=0)
    assert not any(p.requires_grad for p in vq.parameters())  # the codebook is a buffer
    target = F.normalize(torch.tensor([1.0, 2.0, -0.5]), dim=0)
    z = target.view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    _, idx, _, _ = vq.train()(z)
    k = int(idx[0, 0, 0])
    before = F.cosine_similarity(vq.codebook[k], target, dim=0)
    for _ in range(5):
        vq(z)
    after = F.cosine_similarity(vq.codebook[k], target, dim=0)
    assert after > before and after > 0.99


def test_dead_codes_restart_from_batch_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, restart_after=3).train()
    z = F.normalize(torch.randn(1, 3, 2, 2), dim=1)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    _, idx, _, _ = vq(z)  # first step: every code the batch did not pick is re-initialised from the batch
    codes = F.normalize(vq.codebook.detach(), dim=-1)
    from_batch = (codes @ vectors.t()).max(1).values > 1 - 1e-5
    unpicked = torch.ones(8, dtype=torch.bool)
    unpicked[idx.reshape(-1)] = False
    assert bool(from_batch[unpicked].all()) and int(unpicked.sum()) >= 4
    # now freeze code 0 out: make it point away from every input; after restart_after steps it is replaced
    with torch.no_grad():
        vq.codebook[0] = -vectors.mean(0) * 10
    for _ in range(3):
        vq(z)
    assert (F.normalize(vq.codebook[0].detach(), dim=0) @ vectors.t()).max() > 1 - 1e-5
    assert int(vq.idle_steps.max()) < 3


def test_usage_and_perplexity():
    vq = VectorQuantizer(10, 3, restart_after=4)
    assert vq.usage() == 0.0  # nothing picked yet
    with torch.no_grad():
        vq.idle_steps[:5] = 0
    assert vq.usage() == 0.5
    assert abs(codebook_perplexity(torch.tensor([0, 1, 2, 3]), 10) - 4) < 1e-6
    assert abs(codebook_perplexity(torch.tensor([5, 5, 5]), 10) - 1) < 1e-6
