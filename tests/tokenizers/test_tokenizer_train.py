import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fourm.cli import main as fourm_bench
from fourm.runs import find_runs
from fourm.tokenizers.train import compose_config, train


def test_train_writes_a_complete_run(tiny_train_overrides):
    cfg = compose_config("train", ["modality=semseg", *tiny_train_overrides, "threads=1"])
    torch.set_num_threads(2)
    try:
        run = train(cfg, progress=False)
        # the run pins its own threads; the caller's count comes back (the demo pretrains in the same process next)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert run.done
    for name in ("config.yaml", "env.json", "log.jsonl", "metrics.json", "DONE", "tokenizer.safetensors"):
        assert (run.path / name).exists(), name
    log = run.read_log()
    epochs = [r for r in log if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["val/pixel_acc"] <= 1 for r in epochs)
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    m = run.metrics
    assert m["steps"] == 6 and m["train_samples"] == 24 and m["val_samples"] == 8 and m["grid"] == 8
    assert set(m["val"]) >= {"pixel_acc", "miou", "codes_used", "token_perplexity"}
    # the majority-class baseline is computed on the same val set
    assert 0 < m["baselines"]["constant"]["pixel_acc"] < 1
    assert run.config["modality"]["name"] == "semseg" and "out" not in run.config
    # rerunning the same command is a no-op on a DONE run
    before = (run.path / "tokenizer.safetensors").stat().st_mtime_ns
    again = train(compose_config("train", ["modality=semseg", *tiny_train_overrides, "threads=1"]), progress=False)
    assert again.path == run.path and (run.path / "tokenizer.safetensors").stat().st_mtime_ns == before


def test_resume_continues_from_the_saved_step_bit_exactly(tiny_train_overrides, tmp_path):
    cfg = compose_config("train", ["modality=depth", *tiny_train_overrides])
    full = train(cfg, progress=False)
    assert sorted(p.name for p in (full.path / "checkpoints").iterdir()) == [
        "step_000003.safetensors", "step_000003.state.pt", "step_000006.safetensors", "step_000006.state.pt"]

    # an interrupted copy: only the epoch-1 checkpoint survived
    other = tmp_path / "other"
    shutil.copytree(full.path, other / full.path.name)
    cut = other / full.path.name
    for name in ("DONE", "metrics.json", "tokenizer.safetensors", "checkpoints/step_000006.safetensors",
                 "checkpoints/step_000006.state.pt"):
        (cut / name).unlink()
    cfg2 = dict(cfg, out=str(other))
    resumed = train(cfg2, progress=False)
    assert resumed.path == cut and resumed.done
    assert [r["step"] for r in resumed.read_log() if r.get("event") == "resume"] == [3]
    a = load_file(full.path / "tokenizer.safetensors")
    b = load_file(cut / "tokenizer.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["val"] == full.metrics["val"]


def test_validation_only_at_the_end_trains_the_same_weights(tiny_train_overrides, tmp_path):
    every = train(compose_config("train", ["modality=semseg", *tiny_train_overrides]), progress=False)
    once = train(compose_config("train", ["modality=semseg", *tiny_train_overrides, "val_every_epochs=0",
                                          f"out={tmp_path}"]), progress=False)
    assert once.path != every.path  # its own run (the setting is part of the config)
    assert [r["epoch"] for r in every.read_log() if r.get("event") == "epoch"] == [1, 2]
    assert [r for r in once.read_log() if r.get("event") == "epoch"] == []
    a, b = load_file(every.path / "tokenizer.safetensors"), load_file(once.path / "tokenizer.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the final metrics are measured once either way (the last epoch's validation is reused), and agree
    assert once.metrics["val"] == every.metrics["val"]
    last_epoch = [r for r in every.read_log() if r.get("event") == "epoch"][-1]
    assert every.metrics["val"] == {k.removeprefix("val/"): v for k, v in last_epoch.items() if k.startswith("val/")}


def test_config_errors_name_the_file_and_key(tiny_world, tmp_path):
    with pytest.raises(ValueError, match=r"train\.yaml.*\['data'\]"):
        compose_config("train", ["modality=depth"])
    with pytest.raises(ValueError, match="train.yaml"):
        compose_config("train", ["modality=lidar", f"data={tiny_world}"])
    cfg = compose_config("train", [f"data={tiny_world}", f"out={tmp_path}", "batch_size=64", "model.image_size=32",
                                   "model.channels=[8,8]"])
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 24 training samples"):
        train(cfg, progress=False)
    assert not list(tmp_path.iterdir())  # no half-made run folder
    with pytest.raises(FileNotFoundError, match="no such folder"):
        train(dict(cfg, data=str(tmp_path / "missing")), progress=False)


def test_cli_trains_and_reports(tiny_train_overrides, capsys):
    rc = fourm_bench(["tokenize", "train", "modality=depth", *tiny_train_overrides, "epochs=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tokenizer.safetensors" in out and "baselines" in out
    out_root = next(o.split("=", 1)[1] for o in tiny_train_overrides if o.startswith("out="))
    (run,) = find_runs(out_root)
    assert run.done and json.loads((run.path / "metrics.json").read_text())["steps"] == 3
    assert fourm_bench(["tokenize", "train", "modality=depth"]) == 2  # missing data=: one clear line
    assert "data" in capsys.readouterr().err


def test_random_crops_lie_on_the_token_grid_and_repeat_with_the_seed():
    from fourm.tokenizers.train import _random_crops

    x = torch.arange(6 * 2 * 32 * 32, dtype=torch.float32).view(6, 2, 32, 32)
    crops = _random_crops(x, 16, 4, seed=7)
    assert crops.shape == (6, 2, 16, 16)
    offsets = []
    for xi, ci in zip(x, crops):
        # the crop's top-left value tells where it came from (the tensor is a ramp)
        y, x_ = divmod(int(ci[0, 0, 0].item()) % (32 * 32), 32)
        assert y % 4 == 0 and x_ % 4 == 0 and y <= 16 and x_ <= 16
        assert torch.equal(ci, xi[:, y : y + 16, x_ : x_ + 16])
        offsets.append((y, x_))
    assert len(set(offsets)) > 1  # one offset per sample, not one per batch
    assert torch.equal(_random_crops(x, 16, 4, seed=7), crops)
    assert not torch.equal(_random_crops(x, 16, 4, seed=8), crops)
    labels = torch.arange(2 * 32 * 32).view(2, 32, 32)  # semseg: [B, H, W] class ids
    assert _random_crops(labels, 8, 4, seed=0).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="crop=18: must be a multiple of the downsampling factor 4"):
        _random_crops(x, 18, 4, seed=0)
    with pytest.raises(ValueError, match="at most 32 px"):
        _random_crops(x, 36, 4, seed=0)


def test_crop_training_is_its_own_run_and_encodes_whole_images(tiny_train_overrides):
    whole = train(compose_config("train", ["modality=depth", *tiny_train_overrides]), progress=False)
    cropped = train(compose_config("train", ["modality=depth", *tiny_train_overrides, "crop=16"]), progress=False)
    assert cropped.done and cropped.path != whole.path and cropped.config["crop"] == 16
    # validation runs on whole images: the same grid and sample count as the whole-image run
    assert cropped.metrics["grid"] == whole.metrics["grid"] and cropped.metrics["val_samples"] == whole.metrics["val_samples"]
    a = load_file(whole.path / "tokenizer.safetensors")
    b = load_file(cropped.path / "tokenizer.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the crops changed what it learned
