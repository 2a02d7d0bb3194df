"""Pretraining on real token shards: world -> tiny VQ-VAEs -> encode -> pretrain (the path the demo takes)."""
from pathlib import Path

import pytest
import torch

from fourm import runs
from fourm.data import world
from fourm.pretrain.data import load_token_samples
from fourm.pretrain.loop import resolve, run_from_config
from fourm.tokenizers.encode import encode_dataset
from fourm.tokenizers.train import compose_config
from fourm.tokenizers.train import train as train_tokenizer

MODS_IN = ["rgb@224", "tok_depth@224", "tok_semseg@224", "caption", "det"]
MODS_OUT = ["tok_depth@224", "tok_semseg@224", "caption", "det"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pretrain_world")
    world.generate(str(root / "world"), 10, 112, seed=0, split="train")
    world.generate(str(root / "world"), 4, 112, seed=1, split="val")
    toks = {}
    for mod in ("depth", "semseg"):
        cfg = compose_config("train", [f"modality={mod}", f"data={root / 'world'}", f"out={root / 'tok'}", "model.image_size=112",
                                       "model.channels=[8,16,32]", "model.codebook_size=64", "epochs=1", "batch_size=5",
                                       "warmup_steps=1", "log_every=1"])
        toks[mod] = str(train_tokenizer(cfg, progress=False).path)
    for split in ("train", "val"):
        cfg = compose_config("encode", [f"data={root / 'world'}", f"split={split}", f"out={root / 'shards'}",
                                        f"tokenizers.depth={toks['depth']}", f"tokenizers.semseg={toks['semseg']}",
                                        "crops=2", "rgb_size=224"])
        encode_dataset(cfg, progress=False)
    return root / "shards"


def test_samples_hold_every_crop_aligned(shards):
    samples = load_token_samples(str(shards / "train-{000000..000000}.tar"), MODS_IN)
    assert len(samples) == 10
    s = samples[0]
    assert s["__crops__"] == 2 and len(s["tok_depth@224"]) == 2
    assert s["tok_depth@224"][0].shape == (14, 14) and s["rgb@224"][1].shape == (3, 224, 224)
    assert isinstance(s["caption"], str) and all(isinstance(c, str) for c in s["det"][0])


def test_det_boxes_are_written_in_the_text_tokenizers_coordinate_bins(shards, tmp_path):
    from fourm.data.text import coord_bins, train_wordpiece
    from fourm.pretrain.data import PretrainData
    from fourm.distributed import detect

    tok = train_wordpiece(["a red cube on a floor"], 2000, tmp_path / "tok16.json", class_names=world.CLASSES,
                          coord_bins=16)
    assert coord_bins(tok) == 16 and tok.get_vocab_size() < 600  # 4 x 16 coordinate tokens, not 4 x 1000
    cfg = resolve([f"data.train={shards}/train-{{000000..000000}}.tar", f"data.val={shards}/val-{{000000..000000}}.tar",
                   f"data.text_tokenizer={tmp_path / 'tok16.json'}", f"model.domains_in=[{','.join(MODS_IN)}]",
                   f"model.domains_out=[{','.join(MODS_OUT)}]", "batch_size=4"])
    data = PretrainData(cfg, detect())
    coords = [int(w.split("=")[1]) for s in data.train for crop in s["det"] for chunk in crop for w in chunk.split()
              if w[:3] in ("v0=", "v1=", "v2=", "v3=")]
    assert coords and max(coords) <= 15 and max(coords) > 7  # 16 bins, used across their range
    ids = tok.encode(data.train[0]["det"][0][0]).ids
    assert tok.token_to_id("[UNK]") not in ids and len(ids) == 5  # 4 coordinate tokens + one class token
    # the official 1000-bin tokenizer keeps the official boxes
    assert load_token_samples(str(shards / "train-{000000..000000}.tar"), MODS_IN)[0]["det"] == \
        load_token_samples(str(shards / "train-{000000..000000}.tar"), MODS_IN, 1000)[0]["det"]


def test_a_text_tokenizer_without_box_tokens_is_refused_for_det(shards, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from fourm.data.text import PAD, EOS, sentinel
    from fourm.pretrain.data import PretrainData
    from fourm.distributed import detect

    plain = Tokenizer(WordLevel({t: i for i, t in enumerate([PAD, EOS, "[UNK]", sentinel(0), sentinel(1), "cube"])},
                                unk_token="[UNK]"))
    plain.save(str(tmp_path / "plain.json"))
    cfg = resolve([f"data.train={shards}/train-{{000000..000000}}.tar", f"data.val={shards}/val-{{000000..000000}}.tar",
                   f"data.text_tokenizer={tmp_path / 'plain.json'}", f"model.domains_in=[{','.join(MODS_IN)}]",
                   f"model.domains_out=[{','.join(MODS_OUT)}]", "batch_size=4"])
    with pytest.raises(ValueError, match="plain.json: has no box coordinate tokens"):
        PretrainData(cfg, detect())


def test_pretrain_from_world_shards(shards, official_fixture_dir, tmp_path):
    cfg = resolve([f"data.train={shards}/train-{{000000..000000}}.tar", f"data.val={shards}/val-{{000000..000000}}.tar",
                   f"data.text_tokenizer={official_fixture_dir / 'text_tokenizer_4m_wordpiece_30k.json'}",
                   f"model.domains_in=[{','.join(MODS_IN)}]", f"model.domains_out=[{','.join(MODS_OUT)}]",
                   "batch_size=4", "budget.num_input_tokens=32", "budget.num_target_tokens=32", "schedule.total_tokens=768",
                   "schedule.warmup_tokens=128", "val.every_steps=3", "val.batches=1", "checkpoint.every_steps=3",
                   f"runs_root={tmp_path}"])
    metrics = run_from_config(cfg, progress=False)
    run = runs.Run(Path(metrics["checkpoint"]).parents[2])
    assert run.done and metrics["step"] == 3
    assert {"val/tok_depth@224", "val/tok_semseg@224", "val/caption", "val/det"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("val/"))
    again = run_from_config(cfg, progress=False)  # DONE: skipped, same metrics
    assert again == run.metrics


def test_vocab_sizes_from_data_fit_the_tokenizers(shards, official_fixture_dir, tmp_path):
    """model.vocab_sizes=data: token tables as large as the shards' VQ codebooks (64) and the text tokenizer."""
    from fourm.data.text import load_tokenizer
    from fourm.models import load_pretrained

    text = official_fixture_dir / "text_tokenizer_4m_wordpiece_30k.json"
    cfg = resolve([f"data.train={shards}/train-{{000000..000000}}.tar", f"data.val={shards}/val-{{000000..000000}}.tar",
                   f"data.text_tokenizer={text}", f"model.domains_in=[{','.join(MODS_IN)}]",
                   f"model.domains_out=[{','.join(MODS_OUT)}]", "model.vocab_sizes=data",
                   "batch_size=4", "budget.num_input_tokens=32", "budget.num_target_tokens=32", "schedule.total_tokens=512",
                   "schedule.warmup_tokens=128", "val.every_steps=2", "val.batches=1", "checkpoint.every_steps=2",
                   f"runs_root={tmp_path}"])
    metrics = run_from_config(cfg, progress=False)
    model = load_pretrained(metrics["checkpoint"])
    n_text = load_tokenizer(text).get_vocab_size()
    assert model.config["vocab_sizes"] == {"tok_depth@224": 64, "tok_semseg@224": 64, "caption": n_text, "det": n_text}
    assert model.decoder_embeddings["tok_semseg@224"].to_logits.weight.shape[0] == 64
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    with pytest.raises(ValueError, match="vocab_sizes='tokenizers'"):
        from fourm.pretrain.loop import build_model
        build_model({**cfg, "model": {**cfg["model"], "vocab_sizes": "tokenizers"}})
