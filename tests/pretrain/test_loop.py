"""Pretraining loop mechanics: bit-exact resume, falling loss, checkpoints in the official format, NaN stop, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fourm import runs
from fourm.models import load_encoder
from fourm.pretrain.data import PretrainData
from fourm.distributed import DistEnv
from fourm.pretrain.loop import TrainingDiverged, train
from fourm.pretrain.schedule import lr_at

from pretrain_samples import make_samples, tiny_config

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tokenizer(official_fixture_dir):
    return str(official_fixture_dir / "text_tokenizer_4m_wordpiece_30k.json")


def _data(cfg, env=DistEnv(), vocab_limit=None):
    return PretrainData(cfg, env, make_samples(12, 0, vocab_limit), make_samples(4, 1, vocab_limit))


def _weights(run):
    from fourm.pretrain.checkpoints import latest_checkpoint

    return load_file(str(latest_checkpoint(run.path / "checkpoints") / "model.safetensors"))


def test_resume_is_bit_exact(tokenizer, tmp_path):
    cfg = tiny_config(tokenizer)
    straight = runs.open_run(tmp_path / "a", cfg)
    train(cfg, straight, stop_after=6, progress=False, data=_data(cfg))
    resumed = runs.open_run(tmp_path / "b", cfg)
    train(cfg, resumed, stop_after=3, progress=False, data=_data(cfg))
    train(cfg, resumed, stop_after=6, progress=False, data=_data(cfg))
    wa, wb = _weights(straight), _weights(resumed)
    assert set(wa) == set(wb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]
    la = [r["loss"] for r in straight.read_log() if "loss" in r and "step" in r]
    lb = [r["loss"] for r in resumed.read_log() if "loss" in r and "step" in r]
    assert la == lb and len(la) == 6
    assert any(r.get("event") == "resume" and r["step"] == 3 for r in resumed.read_log())


def test_loss_falls_and_checkpoint_loads_as_encoder(tokenizer, tmp_path):
    cfg = tiny_config(tokenizer, **{"optim.blr": 0.2, "schedule.warmup_tokens": 64, "val.every_steps": 12})
    run = runs.open_run(tmp_path, cfg)
    metrics = train(cfg, run, stop_after=12, progress=False, data=_data(cfg, vocab_limit=16))
    losses = [r["loss"] for r in run.read_log() if "loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert "val/tok_depth@224" in metrics and "val/caption" in metrics
    from fourm.pretrain.checkpoints import latest_checkpoint

    enc = load_encoder(latest_checkpoint(run.path / "checkpoints") / "model.safetensors")
    assert enc(torch.zeros(1, 3, 224, 224)).shape == (1, 196, 64)


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path):
    cfg = tiny_config(tokenizer, **{"optim.blr": 1e9, "schedule.warmup_tokens": 0, "optim.clip_grad": 0})
    run = runs.open_run(tmp_path, cfg)
    with pytest.raises(TrainingDiverged, match="not finite"):
        train(cfg, run, stop_after=50, progress=False, data=_data(cfg))
    assert any(r.get("event") == "diverged" for r in run.read_log())


def test_lr_schedule_by_tokens():
    assert lr_at(0, 1.0, 100, 1000) == 0.0
    assert lr_at(50, 1.0, 100, 1000) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 100, 1000) == pytest.approx(1.0)
    assert lr_at(550, 1.0, 100, 1000, min_lr=0.0) == pytest.approx(0.5)
    assert lr_at(1000, 1.0, 100, 1000, min_lr=0.1) == pytest.approx(0.1)


def test_ddp_two_processes_match_single_process(tokenizer, tmp_path):
    """2 gloo processes on the same global batch follow the single-process run: losses are normalised by global counts."""
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(HERE / "ddp_worker.py"), tokenizer, str(tmp_path / "ddp"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    cfg = tiny_config(tokenizer)
    single = runs.open_run(tmp_path / "single", cfg)
    train(cfg, single, stop_after=4, progress=False, data=_data(cfg))
    ref = [r["loss"] for r in single.read_log() if "loss" in r and "step" in r]
    assert len(ddp["losses"]) == len(ref) == 4
    for a, b in zip(ddp["losses"], ref):
        assert abs(a - b) / b < 1e-4, (ddp["losses"], ref)


def test_a_run_starts_from_a_checkpoint_with_fewer_modalities(tokenizer, tmp_path, capsys):
    """init=: the blocks and the shared modalities' embeddings come from the checkpoint (4M-21 from 4M-7), the new
    modalities start fresh; a checkpoint of another size is one line before anything runs."""
    from fourm.models.checkpoint import init_from, save_checkpoint
    from fourm.pretrain.loop import build_model, cli

    small = tiny_config(tokenizer, **{"model.domains_in": "[rgb@224,tok_depth@224,caption]",
                                      "model.domains_out": "[tok_depth@224,caption]", "seed": 5})
    torch.manual_seed(5)
    source = build_model(small)
    ckpt = save_checkpoint(source, tmp_path / "source.safetensors")
    cfg = tiny_config(tokenizer, init=str(ckpt))
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, ckpt)
    theirs, ours = source.state_dict(), model.state_dict()
    shared = [k for k in ours if k in theirs]
    assert report["copied"] == len(shared) and report["new"] == sorted(k for k in ours if k not in theirs)
    assert any("encoder.0." in k for k in shared) and any("tok_depth@224" in k for k in shared)
    assert any("tok_normal@224" in k for k in report["new"]) and any("det" in k for k in report["new"])
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
    assert all(torch.equal(ours[k], fresh[k]) for k in report["new"])
    run = runs.open_run(tmp_path / "run", cfg)
    train(cfg, run, stop_after=2, progress=False, data=_data(cfg))
    event = next(r for r in run.read_log() if r.get("event") == "init")
    assert event["copied"] == len(shared) and event["checkpoint"] == str(ckpt)
    assert cli([f"data.text_tokenizer={tokenizer}", "model=micro", f"init={ckpt}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fourm-bench pretrain: init={ckpt}: its transformer is not this run's (dim 64 vs 128")
    assert "\n" not in err
