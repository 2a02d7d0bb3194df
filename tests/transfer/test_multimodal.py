"""NYUv2 RGB-D semseg: depth tokens through the encoder's own tok_depth embedding; RGB-only vs RGB-D on the world."""
from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")
pytest.importorskip("fourm.tokenizers.vqvae")

from mmseg_testdata import fake_paper_layouts, official_fixture, train_depth_tokenizer, world_layouts  # noqa: E402

from transfer import multimodal  # noqa: E402
from transfer.configs import resolve  # noqa: E402
from transfer.mmseg_modules import FourMBackbone  # noqa: E402
from transfer.run import run_transfer  # noqa: E402

RGBD = ["rgb@224", "tok_depth@224"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgbd_world")
    layouts = world_layouts(root)
    tokenizer = train_depth_tokenizer(root / "world", root / "depth_tokenizer.safetensors")
    return layouts, tokenizer


def test_paper_config_is_the_multimae_nyu_protocol(tmp_path):
    c = resolve("nyuv2_semseg_rgbd", "paper", {"data_root": str(tmp_path), "init": "random"})
    t = c["train"]
    assert c["transfer"]["modalities"] == RGBD and c["data"]["num_classes"] == 40
    assert (t["epochs"], t["batch_size"], t["lr"], t["weight_decay"], t["layer_decay"], t["drop_path"]) == (200, 16, 1e-4, 0.05, 0.75, 0.1)
    assert (t["warmup_epochs"], t["schedule"], t["image_size"]) == (1, "cosine", 640)


def test_depth_enters_as_tokens_of_the_official_embedding(data):
    _, tokenizer = data
    backbone = FourMBackbone(init=str(official_fixture()), modalities=RGBD, image_size=64, depth_tokenizer=str(tokenizer))
    assert set(backbone.encoder_model.encoder_embeddings) == set(RGBD)
    assert not any(p.requires_grad for p in backbone.depth_tokenizer.parameters())
    rgb = torch.randn(2, 3, 64, 64)
    near = torch.cat([rgb, torch.full((2, 1, 64, 64), 1.5)], 1)
    far = torch.cat([rgb, torch.full((2, 1, 64, 64), 8.0)], 1)
    ids = backbone.depth_tokens(near[:, 3:], (4, 4))
    assert ids.shape == (2, 4, 4) and ids.dtype == torch.long
    assert not torch.equal(ids, backbone.depth_tokens(far[:, 3:], (4, 4)))
    out_near, out_far = backbone(near), backbone(far)
    assert all(o.shape == (2, 8, 4, 4) for o in out_near)
    assert not torch.allclose(out_near[-1], out_far[-1])  # RGB tokens attend to the depth tokens
    rgb_only = FourMBackbone(init=str(official_fixture()), image_size=64)
    assert torch.equal(rgb_only(near)[-1], rgb_only(far)[-1])  # the extra channel is dropped without a depth embedding


def test_rgbd_without_tokenizer_is_one_clear_error(data, tmp_path):
    layouts, _ = data
    c = resolve("nyuv2_semseg_rgbd", "tiny", {"data_root": str(layouts), "init": "random"})
    with pytest.raises(ValueError, match="depth_tokenizer"):
        multimodal.build(c)


def test_paper_dry_run_builds_model_optimizer_and_data(data, tmp_path):
    _, tokenizer = data
    root = fake_paper_layouts(tmp_path / "data", size=(96, 128))
    c = resolve("nyuv2_semseg_rgbd", "paper", {"data_root": str(root), "init": "random",
                                               "transfer.depth_tokenizer": str(tokenizer)})
    built = multimodal.build(c)
    assert built["model"].decode_head.num_classes == 40 and built["train_dataloader"].batch_size == 16
    sample = built["train_dataloader"].dataset[0]
    assert sample["inputs"].shape[0] == 4  # RGB + depth channel


def test_tiny_rgb_only_vs_rgbd_end_to_end(data, tmp_path):
    layouts, tokenizer = data
    results = {}
    for name, mods in (("rgb", ["rgb@224"]), ("rgbd", RGBD)):
        c = resolve("nyuv2_semseg_rgbd", "tiny", {"data_root": str(layouts), "init": str(official_fixture()),
                                                  "runs_root": str(tmp_path / "runs"), "transfer.depth_tokenizer": str(tokenizer),
                                                  "transfer.modalities": f"[{','.join(mods)}]"})
        t0 = time.perf_counter()
        run = run_transfer(c)
        results[name] = run
        print(f"nyuv2_semseg_rgbd tiny {name}: {time.perf_counter() - t0:.1f}s metrics={run.metrics}")
        assert 0.0 <= run.metrics["mIoU"] <= 100.0 and run.metrics["val_loss"] > 0
    assert results["rgb"].id != results["rgbd"].id  # the modalities are part of the run identity
