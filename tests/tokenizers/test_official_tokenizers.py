"""The official 4M tokenizers against outputs recorded from the official code (tests/fixtures/official_tokenizers):
tokens identical, encoder / decoder / single denoising passes within 1e-5, multi-step diffusion decodes within 5e-5;
every released architecture builds with exactly the released keys and shapes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fourm.tokenizers import build_tokenizer, load_tokenizer, register_architecture, tokenizer_input
from fourm.tokenizers.official import DiVAE, TokenizerError, VQVAE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official_tokenizers"


@pytest.fixture(scope="module", autouse=True)
def tiny_factories():
    # the sizes the fixtures name (their README): what a user registers for a size of their own
    register_architecture("vit_t_enc", dim_tokens=32, depth=2, num_heads=2)
    register_architecture("vit_t_dec", dim_tokens=32, depth=2, num_heads=2)
    register_architecture("unet_patched_t", patch_size=4, model_channels=32, num_res_blocks=1,
                          attention_resolutions=[2], channel_mult=(1, 2))
    torch.set_num_threads(1)


def _io(name: str) -> tuple[dict, dict]:
    with safe_open(str(FIXTURES / f"{name}_io.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).clone() for k in f.keys()}, f.metadata()


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize("name,cls", [("semseg_vqvae", VQVAE), ("clip_vqvae", VQVAE), ("dinov2_global_vqvae", VQVAE),
                                      ("depth_divae", DiVAE)])
def test_tokens_are_identical_and_every_intermediate_within_1e5(name, cls):
    torch.set_num_threads(1)
    model = load_tokenizer(FIXTURES / f"{name}.safetensors")
    assert type(model) is cls
    t, _ = _io(name)
    for case in sorted({k.split(".")[0] for k in t}):
        x = t[f"{case}.input.model"]
        with torch.no_grad():
            prepared = model.prepare_input(x)
            features = model.encoder(prepared)
            if f"{case}.enc.prepared" in t:
                assert _max(prepared, t[f"{case}.enc.prepared"]) == 0.0
            assert _max(features, t[f"{case}.enc.features"]) < 1e-5
            assert _max(model.quant_proj(features), t[f"{case}.enc.latents"]) < 1e-5
            tokens = model.tokenize(x)
            assert torch.equal(tokens, t[f"{case}.tokens"]), f"{name}/{case}: {(tokens != t[f'{case}.tokens']).sum()} tokens differ"
            quant = model.tokens_to_embedding(tokens)
            assert _max(quant, t[f"{case}.quant.embedding"]) < 1e-5
            if f"{case}.dec.output" in t:
                assert _max(model.post_quant_proj(quant), t[f"{case}.dec.post_quant"]) < 1e-5
                out = model.decode_tokens(tokens)
                assert _max(out, t[f"{case}.dec.output"]) < 1e-5
                if f"{case}.dec.argmax" in t:
                    assert torch.equal(out.argmax(1), t[f"{case}.dec.argmax"])


def test_global_tokens_as_a_flat_sequence_decode_the_same():
    model = load_tokenizer(FIXTURES / "dinov2_global_vqvae.safetensors")
    t, _ = _io("dinov2_global_vqvae")
    flat = t["v.tokens"].flatten(1)  # [B, 16]: tok_dinov2_global as the 4M model sees it
    assert _max(model.decode_tokens(flat), t["v.dec.output"]) < 1e-5


def test_divae_single_denoising_passes_and_decodes():
    torch.set_num_threads(1)
    model = load_tokenizer(FIXTURES / "depth_divae.safetensors")
    t, meta = _io("depth_divae")
    quant = t["r128.quant.embedding"]
    with torch.no_grad():
        for i in range(3):  # timesteps 999 and 500 as 0-d tensors, [37, 730] per sample
            out = model.decoder(t[f"r128.denoise.{i}.noisy_sample"], t[f"r128.denoise.{i}.timestep"], quant)
            assert _max(out, t[f"r128.denoise.{i}.output"]) < 1e-5
        noisy = model.schedule.add_noise(t["r128.input.model"], t["r128.denoise.1.noise"], t["r128.denoise.1.timestep"])
        assert _max(noisy, t["r128.denoise.1.noisy_sample"]) < 1e-6
    runs = {r["name"]: r for r in json.loads(meta["decode_runs"])}
    for name, scheduler in (("ddim10", "ddim"), ("ddim25", "ddim"), ("ddpm10", None)):  # None: the model's own (DDPM)
        run = runs[name]
        out = model.decode_tokens(t["r128.tokens"], timesteps=run["steps"], image_size=run["image_size"],
                                  generator=torch.Generator().manual_seed(run["seed"]), scheduler=scheduler)
        assert _max(out, t[f"r128.decode.{name}.output"]) < 5e-5, name
        assert float(out.abs().max()) <= 1.0  # the last step returns the clamped x0


@pytest.mark.parametrize("kind,name", [("semseg", "semseg_vqvae"), ("depth", "depth_divae"), ("global", "dinov2_global_vqvae")])
def test_official_input_transforms_from_the_stored_form(kind, name):
    t, _ = _io(name)
    case = sorted({k.split(".")[0] for k in t})[0]
    got = tokenizer_input(kind, t[f"{case}.input.raw"].numpy())
    want = t[f"{case}.input.model"]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _max(got, want) < 1e-6


def test_every_released_architecture_builds_with_the_released_keys_and_shapes():
    manifest = json.loads((FIXTURES / "real_architecture_manifest.json").read_text())["tokenizers"]
    assert len(manifest) == 12
    for name, entry in manifest.items():
        with torch.device("meta"):
            model = build_tokenizer(entry["config_inferred"])
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: list(shape) for k, shape, _ in entry["state_dict"]}
        assert ours == theirs, name
        assert type(model).__name__ == entry["class"]


# `fourm-bench tokenize train` commands that make each released tokenizer's architecture
TRAIN_COMMANDS = {
    "rgb_16k_224-448": ["arch=divae", "modality=rgb"],
    "depth_8k_224-448": ["arch=divae", "modality=depth"],
    "normal_8k_224-448": ["arch=divae", "modality=normal"],
    "edge_8k_224-512": ["arch=divae", "modality=canny_edge"],
    "semseg_4k_224-448": ["arch=vit_vqvae", "modality=semseg", "modality.num_classes=133"],
    "CLIP-B16_8k_224-448": ["arch=vit_vqvae", "modality=clip"],
    "DINOv2-B14_8k_224-448": ["arch=vit_vqvae", "modality=dinov2", "modality.feature_dim=768"],
    "ImageBind-H14_8k_224-448": ["arch=vit_vqvae", "modality=imagebind"],
    "DINOv2-B14-global_8k_16_224": ["arch=mlp_vqvae", "modality=dinov2_global"],
    "ImageBind-H14-global_8k_16_224": ["arch=mlp_vqvae", "modality=imagebind_global", "official.vector_dim=1280"],
}


@pytest.mark.parametrize("name", sorted(TRAIN_COMMANDS))
def test_tokenize_train_defaults_are_the_released_architectures(name):
    """Every constructor value `tokenize train` writes equals the released tokenizer's (the manifest's config, from
    the official training yamls), except the image size: the released ones end at 448 (edges 512) after their
    multi-resolution stage; training here is at the 224 px of the first stage."""
    from fourm.tokenizers.train import compose_config
    from fourm.tokenizers.train_official import official_config

    released = json.loads((FIXTURES / "real_architecture_manifest.json").read_text())["tokenizers"][name]["config_inferred"]
    ours = official_config(compose_config("train", [*TRAIN_COMMANDS[name], "data=/datasets", "model=4m"]))
    assert {k: v for k, v in ours.items() if k != "image_size" and released.get(k, "missing") != v} == {}
    assert ours["image_size"] == 224 and released["image_size"] in (224, 448, 512)
    with torch.device("meta"):
        model = build_tokenizer(ours)
    with torch.device("meta"):
        reference = build_tokenizer(released)
    assert {k: v.shape for k, v in model.state_dict().items() if "pos_emb" not in k} == \
        {k: v.shape for k, v in reference.state_dict().items() if "pos_emb" not in k}


def test_feature_map_tokenizers_trained_here_have_one_token_a_cell():
    """A CLIP map [512, 14, 14]: the official ViT tokenizer's image size is the grid x the extractor's patch."""
    from fourm.tokenizers.train import compose_config
    from fourm.tokenizers.train_official import official_config

    cfg = official_config(compose_config("train", ["arch=vit_vqvae", "modality=clip", "data=/datasets",
                                                   "official.enc_type=vit_t_enc", "official.vit_dec_type=vit_t_dec",
                                                   "official.codebook_size=64"]))
    assert (cfg["image_size"], cfg["patch_size"], cfg["n_channels"]) == (224, 16, 512)
    torch.manual_seed(0)
    tok = build_tokenizer(cfg).eval()
    assert tok.tokenize(torch.randn(2, 512, 14, 14)).shape == (2, 14, 14)


def test_bad_files_configs_and_inputs_are_one_clear_error(tmp_path, official_fixture_dir):
    with pytest.raises(ValueError, match="not a tokenizer config"):
        load_tokenizer(official_fixture_dir / "tiny_4m7.safetensors")  # a 4M model, not a tokenizer
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        load_tokenizer("EPFL-VILAB/4M_tokenizers_depth_8k_224-448")
    with pytest.raises(TokenizerError, match="unknown tokenizer architecture 'vit_zz_enc'.*register_architecture"):
        build_tokenizer({"enc_type": "vit_zz_enc", "dec_type": "vit_t_dec", "quant_type": "lucid"})
    with pytest.raises(ValueError, match="unknown keys \\['width'\\]"):
        register_architecture("vit_q_enc", dim_tokens=8, depth=1, num_heads=1, width=3)
    depth = load_tokenizer(FIXTURES / "depth_divae.safetensors")
    with pytest.raises(TokenizerError, match=r"takes \[B, 1, H, W\].*got \[1, 3, 32, 32\]"):
        depth.tokenize(torch.zeros(1, 3, 32, 32))  # RGB into the depth tokenizer
    with pytest.raises(TokenizerError, match="not a multiple of the patch size 16"):
        depth.tokenize(torch.zeros(1, 1, 40, 40))
    with pytest.raises(TokenizerError, match=r"token ids must be in \[0, 8192\)"):
        depth.decode_tokens(torch.full((1, 2, 2), 9000), timesteps=1)
    semseg = load_tokenizer(FIXTURES / "semseg_vqvae.safetensors")
    with pytest.raises(TokenizerError, match="class ids"):
        semseg.tokenize(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TokenizerError, match="unknown tokenizer input kind 'lidar'"):
        tokenizer_input("lidar", np.zeros((2, 2)))


def test_encode_writes_the_official_token_space_of_a_world(tiny_world, tmp_path):
    """`tokenize encode tokenizers.<folder>=<official file>`: crops through the official input transforms; the
    stored tokens are the official tokenizer's on the same crops."""
    from fourm.modalities import spec
    from fourm.tokenizers.encode import encode_dataset
    from fourm.tokenizers.modality_io import center_box, crop_resize_flip, read_raw, to_tensor
    from fourm.tokenizers.shards import TokenShardDataset
    from fourm.tokenizers.train import compose_config

    cfg = compose_config("encode", [f"data={tiny_world}", "split=val", f"out={tmp_path / 'shards'}",
                                    f"tokenizers.semseg={FIXTURES / 'semseg_vqvae.safetensors'}",
                                    f"tokenizers.depth={FIXTURES / 'depth_divae.safetensors'}",
                                    "official_image_size=32", "crops=2", "store_rgb=false", "text=[]"])
    index = encode_dataset(cfg, progress=False)
    assert index["samples"] == 8 and index["modalities"]["tok_semseg@224"]["grid"] == 4
    assert index["modalities"]["tok_depth@224"]["grid"] == 2  # patch 16 at 32 px
    semseg = load_tokenizer(FIXTURES / "semseg_vqvae.safetensors")
    sample = next(iter(TokenShardDataset(index["pattern"], crop=0, shuffle=False)))
    raw = read_raw(tiny_world / "val", "semseg", sample["__key__"])
    x = to_tensor("semseg", raw)
    crop = crop_resize_flip("semseg", x, center_box(*x.shape[-2:]), 32, False)
    want = semseg.tokenize(tokenizer_input(spec("semseg").official_input, crop.numpy().astype(np.uint8)))[0]
    assert torch.equal(sample["tok_semseg@224"], want)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda: CUDA is not available here"):
            encode_dataset(compose_config("encode", [f"data={tiny_world}", "split=val", f"out={tmp_path / 'c'}",
                                                     f"tokenizers.semseg={FIXTURES / 'semseg_vqvae.safetensors'}",
                                                     "device=cuda"]), progress=False)
    # a folder of global embeddings through the official memcodes tokenizer: 16 ids, stored as 4 x 4, every crop
    (tiny_world / "val" / "imagebind_global").mkdir(exist_ok=True)
    for p in (tiny_world / "val" / "rgb").glob("*.png"):
        np.save(tiny_world / "val" / "imagebind_global" / f"{p.stem}.npy",
                np.random.default_rng(int(p.stem)).normal(size=768).astype(np.float32))
    index = encode_dataset(compose_config("encode", [f"data={tiny_world}", "split=val", f"out={tmp_path / 'g'}",
                                                     f"tokenizers.imagebind_global={FIXTURES / 'dinov2_global_vqvae.safetensors'}",
                                                     "crops=2", "text=[]"]), progress=False)
    assert index["modalities"]["tok_imagebind_global"]["grid"] == 4
    sample = next(iter(TokenShardDataset(index["pattern"], crop=1, shuffle=False)))
    vec = torch.from_numpy(np.load(tiny_world / "val" / "imagebind_global" / f"{sample['__key__']}.npy"))
    glob = load_tokenizer(FIXTURES / "dinov2_global_vqvae.safetensors")
    assert torch.equal(sample["tok_imagebind_global"].flatten(), glob.tokenize(tokenizer_input("global", vec[None]))[0].flatten())


def test_generate_and_oob_decode_with_official_tokenizers(tiny_world, tmp_path, official_fixture_dir):
    """The tiny official 4M-7 checkpoint with the tiny official depth (DiVAE) and semseg tokenizers: generated tokens
    on the model's 14 x 14 grid decode to pictures, and the out-of-the-box rows are computed through them."""
    from fourm.generation import cli as gen_cli
    from fourm.generation import oob

    toks = [f"tokenizers.depth={FIXTURES / 'depth_divae.safetensors'}",
            f"tokenizers.semseg={FIXTURES / 'semseg_vqvae.safetensors'}"]
    out = tmp_path / "gen"
    assert gen_cli.cli([f"checkpoint={official_fixture_dir / 'tiny_4m7.safetensors'}", *toks,
                        "targets=tok_depth@224,tok_semseg@224", f"input={tiny_world / 'val'}", "num=2", "steps=2",
                        "decode_steps=2", f"out={out}"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    arrays = np.load(out / f"{pngs[0].stem}.npz")
    assert arrays["tok_depth@224"].shape == (1, 224, 224) and float(np.abs(arrays["tok_depth@224"]).max()) <= 1.0
    assert arrays["tok_semseg@224"].shape == (112, 112)  # 14 x 14 tokens at the semseg tokenizer's patch 8
    cfg = oob.parse_args([f"checkpoint={official_fixture_dir / 'tiny_4m7.safetensors'}", *toks, f"data={tiny_world}",
                          "split=val", "num=4", "steps=2", "decode_steps=2", f"runs_root={tmp_path / 'oob'}"])
    m = oob.run_oob(cfg, progress=False).metrics
    assert 0 <= m["depth/delta1"] <= 100 and 0 <= m["depth/delta1.ceiling"] <= 100
    assert 0 <= m["semseg/miou.ceiling"] <= 100


@pytest.mark.parametrize("arch,modality,extra", [
    ("vit_vqvae", "semseg", ["official.patch_size=8"]),
    ("divae", "depth", ["official.patch_size=8", "official.unet_type=unet_patched_t", "official.val_steps=2"]),
    ("mlp_vqvae", "dinov2_global", ["official.mlp=BottleneckMLP/B_1-Wi_32", "official.latent_dim=64",
                                    "official.num_codebooks=16", "official.vector_dim=24"]),
])
def test_official_architectures_trained_here_load_strictly(arch, modality, extra, tiny_world, tmp_path):
    from fourm.tokenizers.train import compose_config, train

    if arch == "mlp_vqvae":  # a folder of vectors, as the vit_global labeler writes it
        for split, n in (("train", 24), ("val", 8)):
            (tiny_world / split / modality).mkdir(exist_ok=True)
            for i in range(n):
                np.save(tiny_world / split / modality / f"{i:06d}.npy", np.random.default_rng(i).normal(size=24).astype(np.float32))
    cfg = compose_config("train", [f"modality={modality}", f"arch={arch}", f"data={tiny_world}", f"out={tmp_path}",
                                   "model.image_size=32", "official.enc_type=vit_t_enc", "official.vit_dec_type=vit_t_dec",
                                   "official.codebook_size=64", "epochs=2", "batch_size=8", "warmup_steps=1",
                                   "log_every=1", *extra])
    run = train(cfg, progress=False)
    assert run.done and run.metrics["arch"] == arch
    tok = load_tokenizer(run.path)  # the official format, strictly
    assert type(tok) is (DiVAE if arch == "divae" else VQVAE)
    again = load_tokenizer(run.path / "tokenizer.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(tok.state_dict().values(), again.state_dict().values()))
    if arch == "mlp_vqvae":
        ids = tok.tokenize(tokenizer_input("global", np.zeros((2, 24), np.float32)))
        assert ids.shape == (2, 16, 1, 1)
    else:
        x = tokenizer_input(modality, np.full((2, 32, 32), 3, np.uint8) if modality == "semseg"
                            else np.full((2, 32, 32), 2000, np.int32))
        assert tok.tokenize(x).shape == (2, 4, 4)
    assert run.metrics["val"]["codes_used"] >= 1
    assert train(cfg, progress=False).path == run.path  # DONE: not redone


def test_tokenize_eval_measures_the_ceiling_of_official_and_own_tokenizers(tiny_world, tmp_path, tiny_config):
    from fourm.tokenizers.checkpoint import save_tokenizer
    from fourm.tokenizers.evaluate import evaluate_tokenizer
    from fourm.tokenizers.train import compose_config
    from fourm.tokenizers.vqvae import VQVAE as OwnVQVAE

    cfg = compose_config("eval", [f"tokenizer={FIXTURES / 'depth_divae.safetensors'}", "modality=depth",
                                  f"data={tiny_world}", "image_size=32", "decode_steps=2", "decode_scheduler=ddim",
                                  f"out={tmp_path / 'depth.json'}"])
    m = evaluate_tokenizer(cfg, progress=False)
    assert m["samples"] == 8 and m["grid"] == 2 and m["depth_alignment"] == "scale_shift"
    assert 0 <= m["reconstruction"]["delta1"] <= 1 and 0 <= m["constant"]["delta1"] <= 1
    assert json.loads((tmp_path / "depth.json").read_text())["reconstruction"] == m["reconstruction"]
    torch.manual_seed(0)
    save_tokenizer(OwnVQVAE(tiny_config("semseg")).eval(), tmp_path / "own.safetensors")
    own = evaluate_tokenizer(compose_config("eval", [f"tokenizer={tmp_path / 'own.safetensors'}", "modality=semseg",
                                                     f"data={tiny_world}"]), progress=False)
    assert own["grid"] == 8 and set(own["reconstruction"]) == {"pixel_acc", "miou"}
    with pytest.raises(ValueError, match="is a 'semseg' tokenizer, not 'depth'"):
        evaluate_tokenizer(compose_config("eval", [f"tokenizer={tmp_path / 'own.safetensors'}", "modality=depth",
                                                   f"data={tiny_world}"]), progress=False)


def test_tokenize_eval_reads_a_standard_layout_folder(tiny_world, tmp_path):
    """NYUv2's annotation folder (16-bit depth PNGs in mm, as `fourm-bench world --layouts nyuv2` writes it)."""
    from fourm.data.layouts import write_layouts
    from fourm.tokenizers.evaluate import evaluate_tokenizer
    from fourm.tokenizers.train import compose_config

    layouts = write_layouts(tiny_world, tmp_path / "layouts", which=("nyuv2",), splits=("val",))
    folder = layouts / "nyuv2" / "annotations" / "test"
    m = evaluate_tokenizer(compose_config("eval", [f"tokenizer={FIXTURES / 'depth_divae.safetensors'}", "modality=depth",
                                                   f"folder={folder}", "image_size=32", "decode_steps=1"]), progress=False)
    from_world = evaluate_tokenizer(compose_config("eval", [f"tokenizer={FIXTURES / 'depth_divae.safetensors'}",
                                                            "modality=depth", f"data={tiny_world}", "image_size=32",
                                                            "decode_steps=1"]), progress=False)
    assert m["samples"] == 8 and m["reconstruction"] == pytest.approx(from_world["reconstruction"])


@pytest.mark.parametrize("prediction,zero_snr", [("sample", True), ("v_prediction", True), ("epsilon", False)])
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_every_prediction_type_recovers_x0_from_an_oracle(prediction, zero_snr, kind):
    """A network that knows x0 (and so eps and v at every x_t) leads each sampler to x0: the three parameterisations
    and both schedulers invert the same noise schedule. (epsilon is undefined at alpha_bar = 0, as in the official code.)"""
    from fourm.tokenizers import diffusion

    schedule = diffusion.NoiseSchedule(zero_terminal_snr=zero_snr)
    x0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8

    def oracle(x, t):
        a = schedule.alphas_cumprod[int(t)]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"sample": x0, "epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

    out = diffusion.sample(oracle, tuple(x0.shape), schedule, kind, 10, torch.Generator().manual_seed(0), prediction)
    assert _max(out, x0) < 1e-4


def test_a_file_with_training_names_and_silent_keys_loads_the_same(tmp_path):
    """Released files may carry the training script's names (encoder_type, quantizer_type, input_size_max) and leave
    out keys the weights imply (patch_proj of a feature-map tokenizer, n_labels): the same model loads."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(FIXTURES / "clip_vqvae.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    renamed = {{"enc_type": "encoder_type", "dec_type": "decoder_type", "quant_type": "quantizer_type",
                "image_size": "input_size_max"}.get(k, k): v for k, v in meta.items() if k not in ("patch_proj", "n_labels")}
    renamed["lr"] = "0.0001"  # a training key, ignored
    save_file(load_file(str(FIXTURES / "clip_vqvae.safetensors")), str(tmp_path / "clip.safetensors"), metadata=renamed)
    model = load_tokenizer(tmp_path / "clip.safetensors")
    assert model.config["patch_proj"] is False and model.config["image_size"] == 128
    t, _ = _io("clip_vqvae")
    assert torch.equal(model.tokenize(t["g4.input.model"]), t["g4.tokens"])
