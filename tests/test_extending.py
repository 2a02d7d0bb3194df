"""Adding a modality and a transfer task from one file (docs/extending.md): register them, then encode, pretrain and
transfer with the ordinary commands, and nothing else of the house changes.

The toy modality ``gray`` is a grey copy of the world's RGB, tokenized by an RGB VQ-VAE; the toy task ``brightness``
regresses each image's mean brightness from the frozen encoder's pooled tokens (ridge regression, R² on val). Its
body is this module's :func:`run`, its configs are written by the test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fourm import modalities
from fourm.modalities import ModalitySpec, register_spec, unregister_spec
from transfer.tasks import Headline, TransferTask, register_task, unregister_task

TASK_YAML = """\
transfer:
  task: brightness
  profile: tiny
  init: ???
  model: fm_nano_2e_2d_swiglu_nobias
method: null
data_root: ???
seed: 0
train:
  image_size: 64
  ridge: 1.0
"""


def build(config: dict):
    """The task's model: the frozen 4M encoder of ``transfer.init``."""
    from transfer.adapter import build_encoder

    return build_encoder(config["transfer"]["init"], config["transfer"]["model"],
                         image_size=config["train"]["image_size"]).eval()


def _features(encoder, folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fourm.pretrain.data import IMAGENET_MEAN, IMAGENET_STD

    xs, ys = [], []
    for p in sorted(folder.glob("*.png")):
        a = np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
        ys.append(float(a.mean()))
        xs.append((torch.from_numpy(a).permute(2, 0, 1) - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    with torch.no_grad():
        tokens = encoder({"rgb@224": torch.stack(xs)})
    return tokens.mean(1).double(), torch.tensor(ys, dtype=torch.float64)


def run(config: dict, run) -> dict:
    """Ridge regression of mean brightness on the frozen encoder's mean token; R² on the val split."""
    encoder = build(config)
    size, root = config["train"]["image_size"], Path(config["data_root"])
    xtr, ytr = _features(encoder, root / "train" / "rgb", size)
    xva, yva = _features(encoder, root / "val" / "rgb", size)
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    a = xtr.T @ xtr + config["train"]["ridge"] * torch.eye(xtr.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(a, xtr.T @ (ytr - ytr.mean()))
    pred = xva @ w + ytr.mean()
    r2 = 1 - float(((pred - yva) ** 2).sum() / ((yva - yva.mean()) ** 2).sum().clamp_min(1e-12))
    run.log(event="ridge", train=len(ytr), val=len(yva))
    return {"r2": r2, "num_val": len(yva)}


@pytest.fixture
def toy_registrations(tmp_path):
    """The two registrations a user writes; undone afterwards so other tests see the stock registries."""
    modalities.register("tok_gray@224", "image_tokens", vocab_size=64)
    register_spec(ModalitySpec("gray", "png_rgb", token="tok_gray@224", value="image", resize="bilinear",
                               clamp=(0.0, 1.0), tokenizer="rgb", metric="rgb", render="rgb",
                               summary="a grey copy of the RGB"))
    configs = tmp_path / "brightness_configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(TASK_YAML)
    register_task(TransferTask("brightness", module=__name__, layout="world",
                               headline=(Headline("r2", "brightness R²"),), reference_gpus=1, global_batch=16,
                               gpu_hours_b=0.1, configs=str(configs), summary="mean brightness, ridge on frozen tokens"))
    yield
    unregister_task("brightness")
    unregister_spec("gray")
    modalities.unregister("tok_gray@224")


def test_a_toy_modality_and_task_run_through_encode_pretrain_and_transfer(toy_registrations, tmp_path,
                                                                         official_fixture_dir):
    from fourm.data import world
    from fourm.models import load_pretrained
    from fourm.pretrain.loop import resolve, run_from_config
    from fourm.tokenizers.encode import encode_dataset
    from fourm.tokenizers.train import compose_config
    from fourm.tokenizers.train import train as train_tokenizer
    from results.report import headline
    from transfer.run import make_config, run_transfer

    torch.set_num_threads(1)
    data = tmp_path / "world"
    world.generate(str(data), 10, 112, seed=0, split="train")
    world.generate(str(data), 6, 112, seed=1, split="val")
    for split in ("train", "val"):  # the new modality's folder, as a labeler would write it
        (data / split / "gray").mkdir()
        for p in (data / split / "rgb").glob("*.png"):
            g = np.asarray(Image.open(p).convert("L"))
            Image.fromarray(np.repeat(g[..., None], 3, -1)).save(data / split / "gray" / p.name)

    # a tokenizer: `modality=gray` needs no YAML of its own (the spec names its adapter and token modality)
    cfg = compose_config("train", ["modality=gray", f"data={data}", f"out={tmp_path / 'tok'}", "model.image_size=112",
                                   "model.channels=[8,16,32]", "model.codebook_size=64", "epochs=1", "batch_size=5",
                                   "warmup_steps=1", "log_every=1"])
    assert cfg["modality"]["token_modality"] == "tok_gray@224"
    tok = train_tokenizer(cfg, progress=False)
    assert set(tok.metrics["val"]) >= {"mae", "psnr"}  # the spec's metric kind (rgb)

    # token shards: tokenizers.gray=<run> as for any built-in modality
    for split in ("train", "val"):
        index = encode_dataset(compose_config("encode", [f"data={data}", f"split={split}", f"out={tmp_path / 'shards'}",
                                                         f"tokenizers.gray={tok.path}", "rgb_size=224"]), progress=False)
        assert "tok_gray@224" in index["modalities"]

    # pretraining: RGB in, the new tokens out
    alphas = tmp_path / "gray_alphas.yaml"
    alphas.write_text("rgb@224: {input_alphas: [1.0], target_alphas: [0.0]}\n"
                      "tok_gray@224: {input_alphas: [0.5], target_alphas: [0.5]}\n")
    pcfg = resolve([f"data.train={tmp_path}/shards/train",
                    f"data.val={tmp_path}/shards/val",
                    f"data.text_tokenizer={official_fixture_dir / 'text_tokenizer_4m_wordpiece_30k.json'}",
                    "model.domains_in=[rgb@224,tok_gray@224]", "model.domains_out=[tok_gray@224]",
                    f"alphas.spec={alphas}", "batch_size=4", "budget.num_input_tokens=32", "budget.num_target_tokens=32",
                    "schedule.total_tokens=512", "schedule.warmup_tokens=128", "val.every_steps=2", "val.batches=1",
                    "checkpoint.every_steps=2", f"runs_root={tmp_path / 'pretrain'}"])
    metrics = run_from_config(pcfg, progress=False)
    assert metrics["step"] == 2 and np.isfinite(metrics["val/tok_gray@224"])
    assert "tok_gray@224" in load_pretrained(metrics["checkpoint"]).decoder_embeddings

    # the toy task: its registration, its configs and this module's run()
    tcfg = make_config("brightness", "tiny", [f"init={metrics['checkpoint']}", f"data_root={data}",
                                              f"runs_root={tmp_path / 'transfer'}", "method=toy"])
    run = run_transfer(tcfg)
    assert run.done and run.metrics["num_val"] == 6 and np.isfinite(run.metrics["r2"])
    assert headline("brightness", run.metrics) == f"r2 {run.metrics['r2']}"


def test_the_toy_task_is_in_the_sweeps_estimate_and_unknown_names_are_errors(toy_registrations):
    from ablations.plan import PlannedRun
    from ablations.sweep import gpu_hours
    from transfer.run import make_config

    planned = PlannedRun("transfer", "p", "id", "/x", {}, model="fm_base_12e_12d_swiglu_nobias", task="brightness",
                         profile="paper")
    assert gpu_hours(planned, {}) == pytest.approx(0.1)
    with pytest.raises(KeyError, match=r"unknown transfer task 'cityscapes'.*register_task"):
        from transfer.tasks import get_task

        get_task("cityscapes")
    from transfer.configs import ConfigError

    with pytest.raises(ConfigError, match="unknown profile 'paper' for task 'brightness'"):
        make_config("brightness", "paper", ["init=random", "data_root=/tmp"])
    with pytest.raises(KeyError, match=r"unknown modality 'albedo'.*register_spec"):
        modalities.spec("albedo")
