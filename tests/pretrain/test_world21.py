"""4M-21 on the world: the world21_tiny pipeline (labels, every tokenizer, shards, a nano pretraining, out of the box)
run once on the local launcher, and what each stage left behind."""
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ablations.pipeline import run_pipeline
from fourm import modalities as M
from fourm.data.serialize import METADATA_TYPES, metadata_from_chunks, palette_from_text, sam_from_text
from fourm.distributed import DistEnv
from fourm.models import load_pretrained
from fourm.pretrain.stream import StreamingData
from fourm.pretrain.loop import validate
from fourm.runs import Run
from fourm.tokenizers.checkpoint import load_tokenizer
from fourm.tokenizers.mlp_vqvae import MLPVQVAE
from fourm.tokenizers import layout

# what the world can label of 4M-21 (no people: no human_poses); T5 embeddings and RGB pixels are input-only
WORLD21 = [m for m in M.MOD21 if m != "human_poses"]
TARGETS = [m for m in WORLD21 if m not in ("rgb@224", "t5_caption")]


@pytest.fixture(scope="module")
def world21(tmp_path_factory):
    """(work folder, {stage kind: [run folders]}) of the tiny 4M-21 pipeline."""
    root = tmp_path_factory.mktemp("world21")
    result = run_pipeline("world21_tiny", root / "work", root / "out", launcher="local")
    by_kind = {}
    for s in result["stages"]:
        by_kind.setdefault(s["kind"], []).append(Path(s["run_dir"]))
    assert all(Run(d).done for ds in by_kind.values() for d in ds)
    return root / "work", by_kind


def _pretrain(world21) -> tuple[Path, dict]:
    run_dir = world21[1]["pretrain"][0]
    return run_dir, yaml.safe_load((run_dir / "config.yaml").read_text())


def test_the_model_holds_every_modality_the_world_can_label(world21):
    _, cfg = _pretrain(world21)
    assert sorted(cfg["model"]["domains_in"]) == sorted(WORLD21)
    assert sorted(cfg["model"]["domains_out"]) == sorted(TARGETS)


def test_an_array_labeller_splits_every_split_between_its_tasks(world21):
    work, by_kind = world21
    canny = [Run(d) for d in by_kind["labels"] if yaml.safe_load((d / "config.yaml").read_text())["labeler"] == "canny_edge"]
    # two array tasks (recipe: parts 2), each labelling its half of every split: 24 / 8 / 32 images in all
    assert len(canny) == 2
    assert [{s: r.metrics[s]["labelled"] for s in ("train", "val", "pretrain")} for r in canny] == \
        [{"train": 12, "val": 4, "pretrain": 16}] * 2


def test_shards_hold_4m21_tokens_and_text_in_the_official_formats(world21):
    work, by_kind = world21
    index = json.loads((by_kind["shards"][0] / "val.json").read_text())
    assert sorted(index["modalities"]) == sorted(m for m in TARGETS if M.get(m).kind == "image_tokens")
    assert index["text"] == ["caption", "det", "color_palette", "metadata", "sam_instance"]
    assert index["layout"] == "wds" and index["pattern"].startswith(str(by_kind["shards"][0] / "val" / "["))
    src = layout.parse(index["pattern"])
    first = next(layout.read_unit(src, src.units[0], [*index["modalities"], *index["text"], *index["embeddings"]]))
    raw = {f"{m}.{ext}": data for m, (ext, data) in first.files.items()}
    crops = index["crops"]
    assert crops == 2 and layout.crop_settings(first.files)[0].shape == (2, 5)
    assert np.load(io.BytesIO(raw["tok_rgb@224.npy"])).dtype == np.int16  # the official files: int16 [crops, h*w]
    # token grids at the model's grid of each modality (112 px / patch 8: 14 x 14; patch-14 maps 16 x 16; global 4 x 4)
    shapes = {m: layout.token_array(raw[f"{m}.npy"], m).shape for m in index["modalities"]}
    assert shapes["tok_dinov2@224"] == (crops, 16, 16) and shapes["tok_dinov2_global"] == (crops, 4, 4)
    assert shapes["tok_rgb@224"] == shapes["tok_canny_edge@224"] == shapes["tok_clip@224"] == (crops, 14, 14)
    assert index["embeddings"] == ["t5_caption"]
    t5 = np.load(io.BytesIO(raw["t5_caption.npy"]))
    assert t5.dtype == np.float16 and t5.shape[1] == 4096 and 2 <= t5.shape[0] <= 77
    globals_ = layout.token_array(raw["tok_dinov2_global.npy"], "tok_dinov2_global")
    assert (globals_[0] == globals_[1]).all()  # a global embedding describes the whole image: every crop has it
    # each string parses back with its serializer
    palettes = json.loads(raw["color_palette.json"])
    assert [len(palette_from_text(t)) for t in palettes] == [1, 2, 3]
    meta = metadata_from_chunks(json.loads(raw["metadata.json"]))
    assert set(meta) == set(METADATA_TYPES) and all(0 <= v <= 999 for v in meta.values())
    sam = [sam_from_text(t) for t in json.loads(raw["sam_instance.json"])]
    assert len(sam) == crops and all(len(points) == 7 for points in sam)
    found = [inst for points in sam for p in points for inst in p.instances]
    assert found and all(len(tokens) == 16 and max(tokens) < 64 for _, tokens in found)  # 64-code mask tokenizer


def test_pretraining_lowers_every_modalitys_validation_loss(world21):
    run_dir, _ = _pretrain(world21)
    vals = [r for r in Run(run_dir).read_log() if "val/loss" in r]
    first, last = vals[0], vals[-1]
    assert (first["step"], last["step"]) == (10, 60)
    assert last["val/loss"] < first["val/loss"] - 0.3  # measured 5.09 -> 4.39
    for m in TARGETS:
        assert math.isfinite(last[f"val/{m}"]) and last[f"val/{m}"] < first[f"val/{m}"], m


def test_its_checkpoint_loads_strictly_and_reproduces_the_logged_validation(world21):
    run_dir, cfg = _pretrain(world21)
    metrics = Run(run_dir).metrics
    model = load_pretrained(metrics["checkpoint"])
    assert sorted(model.encoder_embeddings) == sorted(WORLD21) and sorted(model.decoder_embeddings) == sorted(TARGETS)
    pos = model.encoder_embeddings["tok_dinov2_global"].pos_emb
    assert isinstance(pos, torch.nn.Parameter) and pos.shape[1] == 16  # learned, one per global token
    data = StreamingData(cfg, DistEnv())
    again = validate(model, data, cfg, torch.device("cpu"), DistEnv())
    for m in ["loss", *TARGETS]:
        assert again[f"val/{m}"] == pytest.approx(metrics[f"val/{m}"], abs=1e-5), m


def test_global_tokens_decode_to_embeddings_and_retrieve_images(world21):
    work, by_kind = world21
    oob = Run(by_kind["oob"][0]).metrics
    for name in ("dinov2_global", "imagebind_global"):
        for src in ("rgb", "caption"):
            row = {k.split("/", 1)[1]: v for k, v in oob.items() if k.startswith(f"retrieval_{name}_from_{src}/")}
            assert set(row) == {f"recall@{k}{s}" for k in (1, 5) for s in ("", ".ceiling", ".baseline")}
            assert row["recall@1.baseline"] == 100 / 8 and row["recall@5.baseline"] == 500 / 8
            assert row["recall@5.ceiling"] > row["recall@5.baseline"]  # the tokens keep what tells the images apart
    # the report's out-of-the-box table has the rows
    report = (work.parent / "out" / "report.md").read_text()
    assert "caption → image retrieval R@1 (DINOv2 global tokens)" in report
    assert "RGB → image retrieval R@5 (ImageBind global tokens)" in report
    tok = next(load_tokenizer(d) for d in by_kind["vector_tokenizer"]
               if load_tokenizer(d).config.modality == "dinov2_global")
    assert isinstance(tok, MLPVQVAE) and tok.config.token_modality == "tok_dinov2_global"
    metrics = next(Run(d).metrics for d in by_kind["vector_tokenizer"] if tok.config.modality in Run(d).config["modality"])
    # the tokenizer beats the training mean on the val split's embeddings (centred cosine: the mean scores 0)
    assert metrics["val"]["centered_cosine"] > metrics["val_mean_baseline"]["centered_cosine"] + 0.2


def test_a_recipe_naming_an_unknown_labeler_fails_before_any_job(tmp_path):
    from ablations.pipeline import RecipeError, expand, load_recipe

    path, cfg = load_recipe("world21_tiny", ["labels.labelers.depth_pro.labeler=depth_pro"])
    with pytest.raises(RecipeError, match=r"labels.labelers.depth_pro: unknown labeler 'depth_pro' \(known: .*canny_edge"):
        expand(cfg, tmp_path / "work", tmp_path / "out", path)
    assert not (tmp_path / "work").exists()


def test_a_tokenizer_key_typo_in_the_recipe_fails_before_any_job(tmp_path):
    from ablations.pipeline import RecipeError, expand, load_recipe

    path, cfg = load_recipe("world21_tiny", ["vector_tokenizers.common.codebok_size=64"])
    with pytest.raises(RecipeError, match=r"vector_tokenizers.modalities.dinov2_global: unknown keys \['codebok_size'\]; "
                                          r"known: steps, seed, batch_size, lr, beta, code_dim, codebook_size"):
        expand(cfg, tmp_path / "work", tmp_path / "out", path)
    path, cfg = load_recipe("world21_tiny", ["mask_tokenizer.lr=0.1"])
    with pytest.raises(RecipeError, match=r"mask_tokenizer: unknown keys \['lr'\]"):
        expand(cfg, tmp_path / "work", tmp_path / "out", path)
