"""Pretraining on real token shards: world -> tiny VQ-VAEs -> encode -> pretrain (the path the demo takes)."""
from pathlib import Path

import pytest
import torch

from fourm import runs
from fourm.data import world
from fourm.pretrain.loop import resolve, run_from_config

MODS_IN = ["rgb@224", "tok_depth@224", "tok_semseg@224", "caption", "det"]
MODS_OUT = ["tok_depth@224", "tok_semseg@224", "caption", "det"]


@pytest.fixture(scope="module")
def shards(world_data):
    return world_data["fourm"]


def _decoded(path, n=None, bins=None):
    """Every sample of a data path, decoded with crop 0 (crops are picked per step otherwise)."""
    from fourm.tokenizers import layout

    src = layout.parse(path)
    dec = layout.SampleDecoder(MODS_IN, {}, bins)
    out = [dec(raw, torch.Generator().manual_seed(0)) for u in src.units for raw in layout.read_unit(src, u, MODS_IN)]
    return out[:n]


def test_samples_hold_every_crop_aligned(world_data):
    from fourm.tokenizers import layout

    src = layout.parse(world_data["wds"]["train"])
    raws = [raw for u in src.units for raw in layout.read_unit(src, u, MODS_IN)]
    assert len(raws) == 24 and len(src.units) == 4
    tokens = layout.token_array(raws[0].files["tok_depth@224"][1], "tok_depth@224")
    assert tokens.shape == (2, 14, 14)  # stored as the official int16 [crops, 196]
    crops, _ = layout.crop_settings(raws[0].files)
    assert crops.shape == (2, 5)
    s = _decoded(world_data["wds"]["train"], 1)[0]
    assert s["tok_depth@224"].shape == (14, 14) and s["rgb@224"].shape == (3, 224, 224)
    assert isinstance(s["caption"], str) and all(isinstance(c, str) for c in s["det"])


def test_det_boxes_are_written_in_the_text_tokenizers_coordinate_bins(shards, tmp_path):
    from fourm.data.text import coord_bins, train_wordpiece

    tok = train_wordpiece(["a red cube on a floor"], 2000, tmp_path / "tok16.json", class_names=world.CLASSES,
                          coord_bins=16)
    assert coord_bins(tok) == 16 and tok.get_vocab_size() < 600  # 4 x 16 coordinate tokens, not 4 x 1000
    samples = _decoded(shards["train"], bins=16)
    coords = [int(w.split("=")[1]) for s in samples for chunk in s["det"] for w in chunk.split()
              if w[:3] in ("v0=", "v1=", "v2=", "v3=")]
    assert coords and max(coords) <= 15 and max(coords) > 7  # 16 bins, used across their range
    ids = tok.encode(samples[0]["det"][0]).ids
    assert tok.token_to_id("[UNK]") not in ids and len(ids) == 5  # 4 coordinate tokens + one class token
    # the official 1000-bin tokenizer keeps the official boxes
    assert _decoded(shards["train"], 1)[0]["det"] == _decoded(shards["train"], 1, 1000)[0]["det"]


def test_a_text_tokenizer_without_box_tokens_is_refused_for_det(shards, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from fourm.data.text import PAD, EOS, sentinel
    from fourm.pretrain.stream import StreamingData
    from fourm.distributed import detect

    plain = Tokenizer(WordLevel({t: i for i, t in enumerate([PAD, EOS, "[UNK]", sentinel(0), sentinel(1), "cube"])},
                                unk_token="[UNK]"))
    plain.save(str(tmp_path / "plain.json"))
    cfg = resolve([f"data.train={shards['train']}", f"data.val={shards['val']}",
                   f"data.text_tokenizer={tmp_path / 'plain.json'}", f"model.domains_in=[{','.join(MODS_IN)}]",
                   f"model.domains_out=[{','.join(MODS_OUT)}]", "batch_size=4"])
    with pytest.raises(ValueError, match="plain.json: has no box coordinate tokens"):
        StreamingData(cfg, detect())


def test_pretrain_from_world_shards(shards, official_fixture_dir, tmp_path):
    cfg = resolve([f"data.train={shards['train']}", f"data.val={shards['val']}",
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
    cfg = resolve([f"data.train={shards['train']}", f"data.val={shards['val']}",
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
