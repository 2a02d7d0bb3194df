"""4M-21: the registry is the official table, and the tiny official 4M-21 checkpoint loads strictly and reproduces
the official outputs (the fixture lives in shared/fixtures/official_4m21 beside the repository: too large to ship)."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from fourm import modalities as M
from fourm.models.checkpoint import load_pretrained, parse_metadata
from fourm.models.factory import create_model, domains
from fourm.models.parity import TOLERANCE, default_fixture_dir_4m21, run_parity

FIXTURE = default_fixture_dir_4m21()
needs_fixture = pytest.mark.skipif(not (FIXTURE / "tiny_4m21.safetensors").exists(),
                                   reason=f"the official 4M-21 fixture is not at {FIXTURE}")


@pytest.fixture(scope="module")
def diffs():
    return run_parity(FIXTURE, "4m21")


@needs_fixture
def test_every_official_output_within_tolerance(diffs):
    assert len([k for k in diffs if k.startswith("mm.mod_loss.")]) == 17
    bad = {k: v for k, v in diffs.items() if v > TOLERANCE}
    assert not bad, f"outputs beyond {TOLERANCE}: {bad}"
    for name in ("mm.enc.ids_keep", "mm.dec.ids_keep", "mm.dec.target_ids", "mm.dec.attn_mask", "mm.enc.mod_mask"):
        assert diffs[name] == 0.0


@needs_fixture
def test_registry_matches_the_checkpoint_and_the_official_ids():
    path = FIXTURE / "tiny_4m21.safetensors"
    with safe_open(str(path), "pt") as f:
        config, keys = parse_metadata(f.metadata()), set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys if k.endswith(".pos_emb")}
    assert config["domains_in"] == domains("4m21")["domains_in"] and config["domains_out"] == domains("4m21")["domains_out"]
    with safe_open(str(FIXTURE / "tiny_4m21_io.safetensors"), "pt") as f:
        ids = parse_metadata(f.metadata())["modality_ids"]
    assert {m: M.get(m).id for m in ids} == ids
    model = load_pretrained(path)
    assert set(model.state_dict()) == keys  # strict, nothing extra
    assert shapes["encoder_embeddings.tok_dinov2@224.pos_emb"] == (1, 256, 8)  # patch 14: 16 x 16
    assert isinstance(model.encoder_embeddings["tok_dinov2_global"].pos_emb, torch.nn.Parameter)  # learned, 16 tokens
    assert not torch.equal(model.encoder_embeddings["tok_dinov2_global"].pos_emb,
                           model.decoder_embeddings["tok_dinov2_global"].pos_emb)  # separate in encoder and decoder
    assert model.modality_info["human_poses"]["max_tokens"] == 275 and M.get("human_poses").max_length == 263


def test_registry_table_without_the_fixture():
    assert len(M.MOD21) == 19 and M.MOD7 == M.MOD21[:8]
    assert M.get("tok_dinov2@224").num_tokens == 256 and M.get("tok_imagebind_global").num_tokens == 16
    assert M.get("t5_caption").type == "seq_emb" and not M.get("t5_caption").has_decoder
    assert M.get("metadata")["type"] == "seq" and M.get("tok_sam_edge@224")["type"] == "img"
    model = create_model("fm_pico_2e_2d_swiglu_nobias", release="4m21")
    assert sorted(model.decoder_embeddings) == domains("4m21")["domains_out"] and "t5_caption" not in model.decoder_embeddings
    # a demo-sized model (112 px, patch 8) keeps every grid: 14 x 14, 16 x 16 for patch 14, 4 x 4 global tokens
    small = create_model("fm_pico_2e_2d_swiglu_nobias", release="4m21", image_size=112, patch_size=8)
    assert small.encoder_embeddings["tok_dinov2@224"].grid == (16, 16)
    assert small.encoder_embeddings["tok_dinov2_global"].grid == (4, 4)
    assert small.modality_info["tok_dinov2@224"].grid == 16


def test_t5_embeddings_are_an_encoder_input_with_a_validity_mask():
    model = create_model("fm_pico_2e_2d_swiglu_nobias", domains_in=["rgb@224", "t5_caption"], domains_out=["caption"]).eval()
    t5 = torch.randn(2, 77, 4096)
    mask = torch.ones(2, 77, dtype=torch.bool)
    mask[0, :12], mask[1, :10] = False, False
    batch = {"rgb@224": {"tensor": torch.randn(2, 3, 224, 224), "input_mask": torch.ones(2, 196, dtype=torch.bool)},
             "t5_caption": {"tensor": t5, "input_mask": mask}}
    out, pad = model.encode(batch, 12)
    assert out.shape == (2, 12, 32) and pad[1, 10:].all() and not pad[0].any()
    t5_changed = t5.clone()
    t5_changed[1, 20:] = 7.0  # rows the mask hides change nothing
    out2, _ = model.encode({**batch, "t5_caption": {"tensor": t5_changed, "input_mask": mask}}, 12)
    assert torch.equal(out, out2)


def test_clear_errors_for_unknown_or_mistyped_modalities():
    with pytest.raises(KeyError, match=r"unknown modalities \['tok_lidar@224'\]"):
        create_model("fm_pico_2e_2d_swiglu_nobias", domains_in=["rgb@224", "tok_lidar@224"], domains_out=["caption"])
    with pytest.raises(ValueError, match=r"'t5_caption' \(embedding_sequence\) is input-only"):
        create_model("fm_pico_2e_2d_swiglu_nobias", domains_in=["rgb@224"], domains_out=["t5_caption"])
    with pytest.raises(ValueError, match=r"needs embedding_dim"):
        M.register("my_emb", "embedding_sequence")
    with pytest.raises(ValueError, match=r"kind must be one of"):
        M.register("my_points", "point_cloud")
    with pytest.raises(ValueError, match=r"embedding sequence of width 768; this model projects 4096-wide"):
        model = create_model("fm_pico_2e_2d_swiglu_nobias", domains_in=["t5_caption"], domains_out=["caption"])
        model.encode({"t5_caption": {"tensor": torch.randn(1, 77, 768), "input_mask": torch.zeros(1, 77, dtype=torch.bool)}}, 4)


@needs_fixture
def test_a_4m21_model_starts_from_the_official_4m7_checkpoint(official_fixture_dir):
    """``pretrain init=<4M-7>``: every tensor of the official 4M-7 file has its place in the 4M-21 model (blocks and
    the seven modalities' embeddings); what is left are the 4M-21 modalities' own."""
    from fourm.models.checkpoint import init_from, read_checkpoint

    model = load_pretrained(FIXTURE / "tiny_4m21.safetensors")
    seven, config = read_checkpoint(official_fixture_dir / "tiny_4m7.safetensors")
    report = init_from(model, official_fixture_dir / "tiny_4m7.safetensors")
    assert (report["copied"], report["of"], report["unused"], report["other_shape"]) == (len(seven), 183, [], [])
    own = set(config["domains_in"]) | set(config["domains_out"])
    assert all(k.split(".")[1] not in own for k in report["new"] if "_embeddings." in k)
    assert all("_embeddings." in k for k in report["new"])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in seven.items())
