"""The streaming reader on files: the official layouts train like the project's shards, a resumed run is bit-exact
on 1 and 2 ranks, bad data is one error naming the shard and key (or skipped and counted), remote shards stream."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fourm import runs
from fourm.distributed import DistEnv
from fourm.pretrain.checkpoints import latest_checkpoint
from fourm.pretrain.loop import train
from fourm.pretrain.stream import StreamingData
from fourm.tokenizers import layout

from pretrain_samples import tiny_config

HERE = Path(__file__).parent
DOMAINS = {"model.domains_in": "[rgb@224,tok_depth@224,tok_semseg@224,caption,det]",
           "model.domains_out": "[tok_depth@224,tok_semseg@224,caption,det]"}


@pytest.fixture(scope="module")
def tokenizer(official_fixture_dir):
    return str(official_fixture_dir / "text_tokenizer_4m_wordpiece_30k.json")


def _cfg(tokenizer, paths, **over):
    return tiny_config(tokenizer, **{"data.train": paths["train"], "data.val": paths["val"], **DOMAINS, **over})


def _losses(run):
    return [r["loss"] for r in run.read_log() if "loss" in r and "step" in r]


def test_the_official_layouts_train_exactly_like_the_projects_shards(world_data, tokenizer, tmp_path):
    """The same encoded data as per-modality shards, folders and single tars (and with 2 workers): the same batches."""
    losses = {}
    for name, lay, over in (("fourm", "fourm", {}), ("wds", "wds", {}), ("folders", "folders", {}),
                            ("wds_workers", "wds", {"num_workers": 2})):
        cfg = _cfg(tokenizer, world_data[lay], **over)
        run = runs.open_run(tmp_path / name, cfg)
        metrics = train(cfg, run, stop_after=4, progress=False)
        losses[name] = _losses(run) + [metrics["val/loss"]]
    assert len(losses["fourm"]) == 5 and all(torch.isfinite(torch.tensor(losses["fourm"])))
    assert losses["wds"] == losses["fourm"] == losses["folders"] == losses["wds_workers"], losses


def test_a_resumed_run_is_bit_exact_with_the_streaming_reader(world_data, tokenizer, tmp_path):
    cfg = _cfg(tokenizer, world_data["wds"])
    straight = runs.open_run(tmp_path / "a", cfg)
    train(cfg, straight, stop_after=6, progress=False)
    resumed = runs.open_run(tmp_path / "b", cfg)
    train(cfg, resumed, stop_after=3, progress=False)
    state = json.loads((latest_checkpoint(resumed.path / "checkpoints") / "data.json").read_text())
    assert state["next_micro"] == 3 and state["streams"] == 4 and len(state["positions"]) == 4
    assert all(p[0] == 0 and p[2] > 0 for p in state["positions"].values())  # mid-epoch: 3 rows read per stream
    train(cfg, resumed, stop_after=6, progress=False)
    wa = load_file(str(latest_checkpoint(straight.path / "checkpoints") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(resumed.path / "checkpoints") / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _losses(straight) == _losses(resumed) and len(_losses(straight)) == 6


def test_two_ranks_resume_bit_exactly_and_see_the_single_process_batches(world_data, tokenizer, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ranks.json"
    paths = world_data["wds"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(HERE / "stream_worker.py"), tokenizer, str(tmp_path / "ddp"), str(out), paths["train"], paths["val"]]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["straight"] == r["resumed"] and len(r["straight"]) == 4
    cfg = _cfg(tokenizer, paths, **{"checkpoint.every_steps": 2})
    single = runs.open_run(tmp_path / "single", cfg)
    train(cfg, single, stop_after=4, progress=False)
    for a, b in zip(r["straight"], _losses(single)):  # each rank reads its own streams: the same global batches
        assert abs(a - b) / b < 1e-4, (r["straight"], _losses(single))


def _copy(world_data, tmp_path) -> tuple[Path, dict]:
    root = Path(world_data["root"]) / "wds" / "train"
    dst = tmp_path / "train"
    shutil.copytree(root, dst)
    pattern = world_data["wds"]["train"].replace(str(root), str(dst))
    return dst, {"train": pattern, "val": world_data["wds"]["val"]}


def _rewrite(tar_path: Path, drop_index: int) -> None:
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for i, (m, data) in enumerate(members):
            if i != drop_index:
                import io

                tar.addfile(m, io.BytesIO(data))


def _first_batches(cfg, n=6):
    data = StreamingData(cfg, DistEnv())
    for step in range(n):
        data.train_batch(step, 0)
    return data


def test_bad_data_is_one_error_naming_the_shard_and_key_or_is_skipped_and_counted(world_data, tokenizer, tmp_path):
    dst, paths = _copy(world_data, tmp_path / "keys")
    _rewrite(dst / "det" / "shard-00001.tar", 2)  # det lacks one key in the middle: the shards no longer align
    with pytest.raises(layout.DataError, match=r"shard-00001.tar: keys out of alignment: .* has '\d+' where .*det/"
                                               r"shard-00001.tar has '\d+'"):
        _first_batches(_cfg(tokenizer, paths))
    dst, paths = _copy(world_data, tmp_path / "cut")
    shard = dst / "tok_depth@224" / "shard-00002.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(layout.DataError, match=r"tok_depth@224/shard-00002.tar is truncated or corrupt .* "
                                               "data.bad_samples=skip"):
        _first_batches(_cfg(tokenizer, paths))
    data = _first_batches(_cfg(tokenizer, paths, **{"data.bad_samples": "skip"}))
    assert data.skipped >= 1 and data.state_dict()["skipped"] == data.skipped
    with pytest.raises(layout.DataError, match=r"train/\[\.\.\.\]/shard-0000\d.tar: sample '\d+': tok_semseg@224 token id "
                                               r"\d+ >= its vocabulary 2"):
        StreamingData(_cfg(tokenizer, world_data["wds"]), DistEnv(), {"tok_semseg@224": 2}).train_batch(0, 0)
    with pytest.raises(ValueError, match="data.streams=3: must divide the 4 rows of a micro-batch"):
        StreamingData(_cfg(tokenizer, world_data["wds"], **{"data.streams": 3}), DistEnv())
    with pytest.raises(layout.DataError, match=r"shards not found: \['/nowhere/tok_depth@224/shard-00000.tar'"):
        layout.parse("/nowhere/[tok_depth@224,caption]/shard-{00000..00001}.tar")


def test_remote_shards_stream_through_webdatasets_pipes(world_data):
    local = layout.parse(world_data["wds"]["train"])
    remote = layout.parse("pipe:cat " + world_data["wds"]["train"])
    assert remote.units == local.units and remote.prefix.startswith("pipe:cat ")
    mods = ["tok_depth@224", "caption", "det"]
    a = [r.files for r in layout.read_unit(local, local.units[1], mods)]
    b = [r.files for r in layout.read_unit(remote, remote.units[1], mods)]
    assert a == b and len(a) == 6


def _progress(data, name):
    """Samples each dataset has given (one 6-sample shard per stream and epoch here)."""
    return sum(p[0] * 6 + p[2] for k, p in data.state_dict()["positions"].items() if k.endswith("/" + name))


def test_datasets_mix_row_by_row_with_their_weights(world_data, tokenizer, tmp_path):
    mix = {"data.mix": {"a": {"train": world_data["wds"]["train"], "weight": 3.0},
                        "b": {"train": world_data["folders"]["train"], "weight": 1.0}}}
    cfg = _cfg(tokenizer, world_data["wds"])
    cfg["data"] = {**cfg["data"], "mix": mix["data.mix"]}
    data = StreamingData(cfg, DistEnv())
    for step in range(100):
        data.train_batch(step, 0)
    a, b = _progress(data, "a"), _progress(data, "b")
    assert a + b == 400 and 0.65 < a / 400 < 0.85, (a, b)
    # a dataset of weight 0 is never drawn: the run is the single-dataset run
    single = runs.open_run(tmp_path / "single", _cfg(tokenizer, world_data["wds"]))
    train(_cfg(tokenizer, world_data["wds"]), single, stop_after=3, progress=False)
    cfg["data"]["mix"] = {"a": {"train": world_data["wds"]["train"], "weight": 1.0},
                          "b": {"train": world_data["folders"]["train"], "weight": 0.0}}
    mixed = runs.open_run(tmp_path / "mixed", cfg)
    train(cfg, mixed, stop_after=3, progress=False)
    assert _losses(mixed) == _losses(single)
    cfg["data"]["mix"] = {"a": {"train": world_data["wds"]["train"], "weight": -1}}
    with pytest.raises(ValueError, match=r"data.mix.a.weight=-1: a sampling weight is a finite number >= 0"):
        StreamingData(cfg, DistEnv())


def test_an_official_data_config_is_the_data_section_of_a_run(world_data, tokenizer, tmp_path):
    from fourm.pretrain.loop import resolve, run_from_config

    official = tmp_path / "cc12m+world.yaml"
    official.write_text(f"""
train:
  datasets:
    world:
      type: multimodal
      in_domains: rgb@224-tok_depth@224-tok_semseg@224-caption-det
      out_domains: tok_depth@224-tok_semseg@224-caption-det
      alphas_config: "cfgs/default/4m/alphas_mixture/main/mix_mod7_all2all_rgb2all_a0.5.yaml"
      data_path: '{world_data["wds"]["train"]}'
      use_wds: True
      wds_n_repeats: 4
      num_input_tokens: 32
      num_target_tokens: 32
    world_folders:
      type: multimodal
      in_domains: rgb@224-tok_depth@224-tok_semseg@224-caption-det
      out_domains: tok_depth@224-tok_semseg@224-caption-det
      alphas_config: "cfgs/default/4m/alphas_mixture/main/mix_mod7_all2all_rgb2all_a0.5.yaml"
      data_path: '{world_data["folders"]["train"]}'
  weights: [0.7, 0.3]
val:
  datasets:
    world:
      data_path: '{world_data["wds"]["val"]}'
""")
    cfg = resolve([f"data.official_config={official}", f"data.text_tokenizer={tokenizer}", "batch_size=4",
                   "schedule.total_tokens=768", "schedule.warmup_tokens=128", "val.every_steps=3", "val.batches=1",
                   "checkpoint.every_steps=3", f"runs_root={tmp_path / 'runs'}"])
    assert cfg["model"]["domains_in"] == ["rgb@224", "tok_depth@224", "tok_semseg@224", "caption", "det"]
    assert cfg["alphas"]["spec"] == "mix_mod7_all2all_rgb2all_a0.5" and cfg["budget"]["num_input_tokens"] == 32
    assert {k: v["weight"] for k, v in cfg["data"]["mix"].items()} == {"world": 0.7, "world_folders": 0.3}
    assert cfg["data"]["val"] == world_data["wds"]["val"]
    metrics = run_from_config(cfg, progress=False)
    assert metrics["step"] == 3 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(official.read_text().replace("alphas_config: \"cfgs/default/4m/alphas_mixture/main/mix_mod7_all2all"
                                                "_rgb2all_a0.5.yaml\"", "alphas_config: mine/unknown_mixture.yaml", 1))
    with pytest.raises(ValueError, match=r"train.datasets.world.alphas_config=mine/unknown_mixture.yaml: no such file"):
        resolve([f"data.official_config={bad}"])


def test_missing_data_is_one_line_before_anything_starts(capsys):
    from fourm.pretrain.loop import cli

    assert cli(["data.train=/nowhere/[tok_depth@224,caption]/shard-{00000..00001}.tar"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fourm-bench pretrain: shards not found: ['/nowhere/tok_depth@224/shard-00000.tar'")
    assert "\n" not in err
    assert cli(["data.bad_samples=maybe"]) == 2
    assert capsys.readouterr().err.strip() == ("fourm-bench pretrain: data.bad_samples='maybe': error (stop naming the "
                                               "shard and key) or skip (count them)")
    assert cli(["data.official_config=/nowhere/cc12m.yaml", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == "fourm-bench pretrain: data.official_config=/nowhere/cc12m.yaml: no such file"


def test_datasets_with_fewer_modalities_and_alphas_of_their_own(world_data, tokenizer, tmp_path):
    """A dataset of a mixture that lacks modalities (here: no RGB, no semseg, no boxes) gives them no tokens, and
    masks what it has with its own alphas; rows of both datasets train together."""
    cfg = _cfg(tokenizer, world_data["wds"])
    lean = {"train": world_data["wds"]["train"], "weight": 1.0, "domains_in": ["tok_depth@224", "caption"],
            "domains_out": ["tok_depth@224", "caption"], "alphas": "mod7_all2all_a0.5"}
    cfg["data"] = {**cfg["data"], "mix": {"full": {"train": world_data["wds"]["train"], "weight": 0.0}, "lean": lean}}
    batch = StreamingData(cfg, DistEnv()).train_batch(0, 0)
    for absent in ("rgb@224", "tok_semseg@224", "det"):
        assert batch[absent]["input_mask"].all() and batch[absent]["target_mask"].all(), absent
    assert (~batch["tok_depth@224"]["input_mask"]).sum(1).gt(0).any()
    assert (~batch["caption"]["target_mask"]).sum() + (~batch["tok_depth@224"]["target_mask"]).sum() > 0
    cfg["data"]["mix"]["full"]["weight"] = 1.0
    run = runs.open_run(tmp_path / "mixed", cfg)
    train(cfg, run, stop_after=3, progress=False)
    assert len(_losses(run)) == 3 and all(torch.isfinite(torch.tensor(_losses(run))))
    # the run's rgb2all component has only RGB as input: a dataset without RGB cannot use that mixture
    cfg["data"]["mix"]["lean"]["alphas"] = None
    with pytest.raises(ValueError, match=r"^data.mix.lean: component 0 of its alphas \(.*mix_mod7_all2all_rgb2all_a0.5.*\) gives "
                                         r"input_alphas only to \['rgb@224'\]"):
        StreamingData(cfg, DistEnv())
    cfg["data"]["mix"]["lean"].update(alphas="mod7_all2all_a0.5", domains_in=["tok_normal@224"])
    with pytest.raises(ValueError, match=r"data.mix.lean: domains \['tok_normal@224'\] are not the model's"):
        StreamingData(cfg, DistEnv())


def test_an_official_data_config_with_a_caption_only_dataset(world_data, tokenizer, tmp_path):
    """The 4M-21 data config's shape: datasets with different domains and alphas (a text dataset beside the
    multimodal ones). The model's domains are their union, sorted, as the official setup_data builds them."""
    from fourm.pretrain.loop import resolve, run_from_config

    official = tmp_path / "world+text.yaml"
    official.write_text(f"""
train:
  datasets:
    world:
      type: multimodal
      in_domains: rgb@224-tok_depth@224-tok_semseg@224-caption-det
      out_domains: tok_depth@224-tok_semseg@224-caption-det
      alphas_config: "cfgs/default/4m/alphas_mixture/main/mix_mod7_all2all_rgb2all_a0.5.yaml"
      data_path: '{world_data["wds"]["train"]}'
    text:
      type: multimodal
      in_domains: caption
      out_domains: caption
      input_alphas: "1.0"
      target_alphas: "1.0"
      data_path: '{world_data["wds"]["train"]}'
  weights: [0.5, 0.5]
val:
  datasets:
    world:
      data_path: '{world_data["wds"]["val"]}'
""")
    cfg = resolve([f"data.official_config={official}", f"data.text_tokenizer={tokenizer}", "batch_size=4",
                   "schedule.total_tokens=768", "schedule.warmup_tokens=128", "val.every_steps=3", "val.batches=1",
                   "checkpoint.every_steps=3", "budget.num_input_tokens=32", "budget.num_target_tokens=32",
                   f"runs_root={tmp_path / 'runs'}"])
    assert cfg["model"]["domains_in"] == ["caption", "det", "rgb@224", "tok_depth@224", "tok_semseg@224"]
    text = cfg["data"]["mix"]["text"]
    assert (text["domains_in"], text["domains_out"]) == (["caption"], ["caption"])
    assert text["alphas"] == {"caption": {"input_alphas": [1.0], "target_alphas": [1.0]}}
    assert cfg["data"]["mix"]["world"]["alphas"] == "mix_mod7_all2all_rgb2all_a0.5"
    metrics = run_from_config(cfg, progress=False)
    assert metrics["step"] == 3 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    only_text = {**cfg, "data": {**cfg["data"], "mix": {**cfg["data"]["mix"], "world": {**cfg["data"]["mix"]["world"], "weight": 0.0}}}}
    batch = StreamingData(only_text, DistEnv()).train_batch(0, 0)
    assert all(batch[m]["input_mask"].all() and batch[m]["target_mask"].all()
               for m in ("rgb@224", "tok_depth@224", "tok_semseg@224", "det"))
    assert (~batch["caption"]["input_mask"]).any() and (~batch["caption"]["target_mask"]).any()
