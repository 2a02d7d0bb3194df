"""The 4M-7 labellers on real-image architectures (random weights, reduced where the budget needs it): official
on-disk forms read back by the official tokenizer input transforms, released sizes checked on the meta device,
weights loaded strictly from safetensors / tensors-only files, pickled releases converted without running code."""
import json
import os
import pickle
import shutil
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.data import labeling
from fourm.data.dpt import DPTHybrid, DPTLabeler
from fourm.data.mask2former import COCO_PANOPTIC_CLASSES, Mask2FormerSemseg, released_config
from fourm.data.weights import WeightsError, convert, read_state_dict
from fourm.modalities.codecs import decode_boxes
from fourm.tokenizers.official import _depth_tensor, tokenizer_input

SMALL_ARCH = dict(embed_dim=64, depth=2, num_heads=2)  # a reduced ViT; the DPT neck and head at full size
SMALL_DPT = dict(SMALL_ARCH, image_size=64)  # labelled at 64 px
SMALL_SWIN = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4, image_size=64)
SMALL_M2F = dict(num_queries=10, decoder_layers=2, encoder_layers=1, dim_feedforward=64, hidden_dim=32,
                 mask_feature_size=32)
SMALL_VITDET = dict(embed_dim=64, depth=2, num_heads=2, window_size=4, global_blocks=(1,))


@pytest.fixture(scope="module")
def images(world_root, tmp_path_factory):
    """Four world images, one of them resized to 48 x 80 (labels must keep every image's own size)."""
    root = tmp_path_factory.mktemp("real") / "split"
    shutil.copytree(world_root / "train" / "rgb", root / "rgb")
    for p in sorted((root / "rgb").iterdir())[4:]:
        p.unlink()
    odd = sorted((root / "rgb").iterdir())[0]
    Image.open(odd).convert("RGB").resize((80, 48)).save(odd)
    return root


def _stems(split):
    return sorted(p.stem for p in (split / "rgb").iterdir())


def _png(path):
    return np.asarray(Image.open(path))


def test_dpt_hybrid_has_the_released_size_and_names():
    with torch.device("meta"):
        depth, normal = DPTHybrid(1), DPTHybrid(3)
    sd = depth.state_dict()
    # DPT-Hybrid is 123M parameters (DPT paper, table 1); the names are those of the DPT / Omnidata checkpoints
    assert sum(v.numel() for v in sd.values()) == pytest.approx(123.1e6, rel=1e-3)
    assert tuple(sd["pretrained.model.patch_embed.backbone.stem.conv.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["pretrained.model.pos_embed"].shape) == (1, 577, 768)  # 384 / 16 = 24, plus the class token
    assert tuple(sd["pretrained.act_postprocess3.0.project.0.weight"].shape) == (768, 1536)
    assert tuple(sd["pretrained.act_postprocess4.4.weight"].shape) == (768, 768, 3, 3)
    assert tuple(sd["scratch.layer2_rn.weight"].shape) == (256, 512, 3, 3)
    assert tuple(sd["scratch.refinenet4.resConfUnit2.conv2.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["scratch.output_conv.4.weight"].shape) == (1, 32, 1, 1)
    assert tuple(normal.state_dict()["scratch.output_conv.4.weight"].shape) == (3, 32, 1, 1)


def test_dpt_depth_and_normals_write_the_official_forms(images, tmp_path):
    for kind in ("depth", "normal"):
        lab = labeling.create_labeler(f"dpt_{kind}", images / "rgb", **SMALL_DPT)
        r = labeling.label_folder(images, lab, tmp_path / kind, batch_size=4, progress=False)
        assert r["labelled"] == 4 and r["bad"] == []
    for stem in _stems(images):
        rgb = _png(images / "rgb" / f"{stem}.png")
        depth, normal = _png(tmp_path / "depth" / f"{stem}.png"), _png(tmp_path / "normal" / f"{stem}.png")
        assert depth.dtype == np.uint16 and depth.shape == rgb.shape[:2]
        assert normal.dtype == np.uint8 and normal.shape == rgb.shape
    # the official input transforms read them back to the labeller's prediction (to 16 / 8-bit quantisation)
    stem = _stems(images)[1]
    x = labeling.read_rgb(images / "rgb" / f"{stem}.png")[None]
    lab = DPTLabeler("depth", **SMALL_DPT)
    pred = lab.predict(x)[0, 0].double().numpy()
    raw = _png(tmp_path / "depth" / f"{stem}.png").astype(np.int32)
    assert np.abs(raw / 65535.0 - pred).max() <= 0.5 / 65535 + 1e-7
    official = tokenizer_input("depth", raw)
    # the project's depth folder reader (millimetres -> metres) feeds the official tokenizer the same tensor
    from fourm.data.layouts import FOURM_MODALITIES

    metres = torch.from_numpy(FOURM_MODALITIES["depth"].decode(tmp_path / "depth" / f"{stem}.png"))[None, None]
    torch.testing.assert_close(_depth_tensor(metres), official)
    n_pred = DPTLabeler("normal", **SMALL_DPT).predict(x)[0]
    n_official = tokenizer_input("normal", _png(tmp_path / "normal" / f"{stem}.png"))[0]
    assert (n_official - (2 * n_pred - 1)).abs().max() <= 1 / 255 + 1e-6


class _Hparams:
    """A class only this test module defines: a Lightning-style checkpoint carries objects like it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker folder: the converter must not run it
        return (os.makedirs, (self.marker,))


def test_released_pickles_are_refused_then_converted_without_running_code(images, tmp_path):
    torch.manual_seed(3)
    source = DPTHybrid(1, **SMALL_ARCH).eval()
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "omnidata_dpt_depth_v2.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 7,
                "hyper_parameters": _Hparams(str(marker)), "args": Namespace(lr=1e-4)}, ckpt)
    with pytest.raises(WeightsError, match="label convert --in .*omnidata_dpt_depth_v2.ckpt"):
        read_state_dict(ckpt)
    assert not marker.exists()
    out = tmp_path / "dpt_depth.safetensors"
    info = convert(ckpt, out)
    assert not marker.exists() and info["tensors"] == len(source.state_dict())
    with pytest.raises(WeightsError, match="never overwrites"):
        convert(ckpt, out)
    # the converted file loads strictly (the Lightning "model." prefix dropped) and predicts as the source model
    lab = DPTLabeler("depth", checkpoint=str(out), seed=99, **SMALL_DPT)
    x = labeling.read_rgb(images / "rgb" / f"{_stems(images)[2]}.png")[None]
    with torch.no_grad():
        want = source((torch.nn.functional.interpolate(x, size=(64, 64), mode="bicubic", antialias=True)
                       .clamp(0, 1) - 0.5) / 0.5).clamp(0, 1)
    torch.testing.assert_close(lab.predict(x), want)
    # a normals checkpoint in the depth labeller: one line naming the key that does not fit
    torch.save(DPTHybrid(3, **SMALL_ARCH).state_dict(), tmp_path / "normal.pth")
    with pytest.raises(WeightsError, match=r"shapes differ: .*scratch\.output_conv\.4\.weight \(3, 32, 1, 1\) vs \(1, 32, 1, 1\)"):
        DPTLabeler("depth", checkpoint=str(tmp_path / "normal.pth"), **SMALL_DPT)
    torch.save({"model": {"blocks.0.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"not the weights of .*missing .*1 unexpected \(blocks\.0\.weight\)"):
        DPTLabeler("depth", checkpoint=str(tmp_path / "other.pth"), **SMALL_DPT)


def test_mask2former_has_the_released_size_and_writes_official_semseg(images, tmp_path):
    from transformers import Mask2FormerForUniversalSegmentation

    with torch.device("meta"):
        full = Mask2FormerForUniversalSegmentation(released_config())
    # Mask2Former Swin-B (IN21k) COCO panoptic: 107M parameters (the Mask2Former model zoo)
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(107e6, rel=0.01)
    assert len(COCO_PANOPTIC_CLASSES) == 133 and COCO_PANOPTIC_CLASSES[79] == "toothbrush"
    cfg = released_config(SMALL_SWIN, **SMALL_M2F)
    lab = labeling.create_labeler("mask2former_semseg", images / "rgb", config=cfg, image_size=64)
    assert labeling.label_folder(images, lab, tmp_path / "semseg", progress=False)["labelled"] == 4
    stems = _stems(images)
    maps = [_png(tmp_path / "semseg" / f"{s}.png") for s in stems]
    assert all(m.dtype == np.uint8 and m.max() <= 132 for m in maps)
    assert maps[0].shape == (48, 80) and maps[1].shape == (64, 64)
    ids = tokenizer_input("semseg", np.stack(maps[1:]))  # the official transform: ids + 1, void 255 -> 0
    torch.testing.assert_close(ids, torch.from_numpy(np.stack(maps[1:]).astype(np.int64) + 1))
    # a saved transformers model folder loads; its classes are matched by name (here: reversed order)
    torch.manual_seed(5)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    names = list(reversed(COCO_PANOPTIC_CLASSES))
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(tmp_path / "m2f")
    loaded = Mask2FormerSemseg(checkpoint=str(tmp_path / "m2f"), image_size=64)
    x = labeling.read_rgb(images / "rgb" / f"{stems[1]}.png")[None]
    reference = Mask2FormerSemseg(config=cfg, image_size=64)
    reference.net.load_state_dict(model.state_dict())
    reference.to_official = torch.arange(133)
    assert np.array_equal(loaded(x, ["a"])[0], 132 - reference(x, ["a"])[0])
    assert (Mask2FormerSemseg(config=cfg, image_size=64, void_below=1.01)(x, ["a"])[0] == 255).all()
    with pytest.raises(WeightsError, match="transformers model folder"):
        Mask2FormerSemseg(checkpoint=str(tmp_path / "semseg"))


def _d2_name(key: str) -> str:
    """This model's key in detectron2's ViTDet names (written from detectron2's module names, independently of the
    converter's rules)."""
    import re

    k = key
    k = k.replace("backbone.net.embeddings.projection.", "backbone.net.patch_embed.proj.")
    k = k.replace("backbone.net.embeddings.position_embeddings", "backbone.net.pos_embed")
    k = re.sub(r"backbone\.net\.encoder\.layer\.(\d+)\.attention\.", r"backbone.net.blocks.\1.attn.", k)
    k = re.sub(r"backbone\.net\.encoder\.layer\.(\d+)\.", r"backbone.net.blocks.\1.", k)
    fpn = {("0", "0"): "simfp_2.", ("0", "1"): "simfp_2.4.", ("0", "2"): "simfp_2.5.",
           ("1", "0"): "simfp_3.0.", ("1", "1"): "simfp_3.1.", ("1", "2"): "simfp_3.2.",
           ("2", "1"): "simfp_4.0.", ("2", "2"): "simfp_4.1.", ("3", "1"): "simfp_5.1.", ("3", "2"): "simfp_5.2."}
    m = re.match(r"neck\.stages\.(\d)\.(\d)\.(.*)", k)
    if m:
        rest = m[3].replace("conv.", "").replace("ln.", "norm.")
        k = "backbone." + fpn[(m[1], m[2])] + rest
    k = re.sub(r"rpn_head\.rpn_conv\.(\d)\.conv\.", r"proposal_generator.rpn_head.conv.conv\1.", k)
    k = k.replace("rpn_head.rpn_cls.", "proposal_generator.rpn_head.objectness_logits.")
    k = k.replace("rpn_head.rpn_reg.", "proposal_generator.rpn_head.anchor_deltas.")
    m = re.match(r"roi_head\.bbox_head\.(\d)\.shared_convs\.(\d)\.(conv|ln)\.(.*)", k)
    if m:
        k = f"roi_heads.box_head.{m[1]}.conv{int(m[2]) + 1}." + ("norm." if m[3] == "ln" else "") + m[4]
    k = re.sub(r"roi_head\.bbox_head\.(\d)\.shared_fcs\.0\.", r"roi_heads.box_head.\1.fc1.", k)
    k = re.sub(r"roi_head\.bbox_head\.(\d)\.fc_cls\.", r"roi_heads.box_predictor.\1.cls_score.", k)
    k = re.sub(r"roi_head\.bbox_head\.(\d)\.fc_reg\.", r"roi_heads.box_predictor.\1.bbox_pred.", k)
    return k


def test_vitdet_boxes_from_a_converted_detectron2_release(images, tmp_path):
    from fourm.data.vitdet import COCO_THING_CLASSES, ViTDetBoxes, build_detector

    with torch.device("meta"):
        full = build_detector()
    sd = full.state_dict()
    assert tuple(sd["backbone.net.embeddings.position_embeddings"].shape) == (1, 197, 1280)  # 224-px pretraining
    assert tuple(sd["backbone.net.encoder.layer.0.attention.rel_pos_h"].shape) == (27, 80)   # window 14
    assert tuple(sd["backbone.net.encoder.layer.7.attention.rel_pos_h"].shape) == (127, 80)  # global at 1024 px
    assert len([k for k in sd if k.endswith("attention.qkv.weight")]) == 32
    assert tuple(sd["roi_head.bbox_head.2.fc_cls.weight"].shape) == (81, 1024)  # 80 COCO classes + background
    assert tuple(sd["roi_head.bbox_head.0.fc_reg.weight"].shape) == (4, 1024)   # class-agnostic boxes
    # a detectron2-layout release of the reduced model: numpy arrays in {"model": ...}, plus a mask head
    torch.manual_seed(11)
    source = ViTDetBoxes(backbone=SMALL_VITDET, image_size=128, score_threshold=0.0, proposals=50)
    d2 = {_d2_name(k): v.numpy() for k, v in source.net.state_dict().items()}
    assert not any(k.startswith(("neck.", "rpn_head.", "roi_head.")) for k in d2)
    d2["roi_heads.mask_head.predictor.weight"] = np.zeros((80, 256, 1, 1), np.float32)
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": d2, "__author__": "Detectron2 Model Zoo"}, f)
    convert(tmp_path / "model_final.pkl", tmp_path / "vitdet.safetensors")
    lab = ViTDetBoxes(checkpoint=str(tmp_path / "vitdet.safetensors"), backbone=SMALL_VITDET, image_size=128,
                      score_threshold=0.0, proposals=50, seed=1)
    r = labeling.label_folder(images, lab, tmp_path / "det", progress=False)
    assert r["labelled"] == 4
    x = labeling.read_rgb(images / "rgb" / f"{_stems(images)[0]}.png")[None]
    assert lab(x, ["a"]) == source(x, ["a"])
    det = json.loads((tmp_path / "det" / f"{_stems(images)[0]}.json").read_text())
    assert (det["image_height"], det["image_width"]) == (48, 80) and det["instances"]
    inst = det["instances"]
    assert [i["score"] for i in inst] == sorted((i["score"] for i in inst), reverse=True)
    assert all(i["class_name"] == COCO_THING_CLASSES[i["class_id"]] for i in inst)
    assert all(0 <= i["boxes"][0] <= i["boxes"][2] <= 80 and 0 <= i["boxes"][1] <= i["boxes"][3] <= 48 for i in inst)
    # the det modality reads the official JSON as its box list
    assert decode_boxes(tmp_path / "det" / f"{_stems(images)[0]}.json") == [[*i["boxes"], i["class_name"]] for i in inst]
    # the threshold keeps only the boxes scoring at least it
    top = inst[len(inst) // 2]["score"]
    strict = ViTDetBoxes(checkpoint=str(tmp_path / "vitdet.safetensors"), backbone=SMALL_VITDET, image_size=128,
                         score_threshold=top, proposals=50)
    assert all(i["score"] >= top for i in strict(x, ["a"])[0]["instances"])


def test_clip_features_are_the_official_maps(images, tmp_path):
    lab = labeling.create_labeler("clip_features", images / "rgb")
    assert labeling.label_folder(images, lab, progress=False)["labelled"] == 4
    f = np.load(images / "clip" / f"{_stems(images)[0]}.npy")
    assert f.dtype == np.float16 and f.shape == (512, 14, 14)  # CLIP-B/16 at 224 px, through the image projection
    assert tokenizer_input("feature_map", f).shape == (1, 512, 14, 14)


def test_bad_images_are_skipped_and_counted_or_stop_the_run(images, tmp_path, capsys):
    split = tmp_path / "split"
    shutil.copytree(images / "rgb", split / "rgb")
    (split / "rgb" / "broken.png").write_bytes(b"\x89PNG broken")
    args = ["--in", str(split), "--labeler", "world_gt_depth"]
    assert labeling.cli(["--in", str(split), "--labeler", "dpt_depth", "--on-bad-image", "stop",
                         "--out", str(tmp_path / "o")]) == 2
    assert "broken.png" in capsys.readouterr().err
    lab = DPTLabeler("depth", **SMALL_DPT)
    r = labeling.label_folder(split, lab, tmp_path / "d", part=(0, 2), progress=False)
    assert r["labelled"] == 2 and r["bad"] == []  # the first half of the 5 sorted images
    r = labeling.label_folder(split, lab, tmp_path / "d", part=(1, 2), progress=False)
    assert r["labelled"] == 2 and r["bad"] == ["broken.png"]
    log = [json.loads(line) for line in (tmp_path / "d" / ".label_log.jsonl").read_text().splitlines()]
    assert [rec["part"] for rec in log] == [[0, 2], [1, 2]] and log[1]["bad_images"] == ["broken.png"]
    assert log[0]["weights"] == "random (seeded)"
    assert sorted(p.name for p in (tmp_path / "d").iterdir() if not p.name.startswith(".")) == \
        sorted(f"{s}.png" for s in _stems(images))
    # options a labeller does not take are refused by name
    assert labeling.cli([*args, "--score-threshold", "0.5"]) == 2
    assert "--score-threshold does not apply to world_gt_depth" in capsys.readouterr().err
    assert labeling.cli([*args, "--part", "3/2"]) == 2
    assert "--part '3/2'" in capsys.readouterr().err


def test_hierarchical_rgb_folders_label_into_the_same_folders(images, tmp_path):
    root = tmp_path / "data"
    for i, p in enumerate(sorted((images / "rgb").iterdir())):
        (root / "rgb" / f"shard-{i % 2:05d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "rgb" / f"shard-{i % 2:05d}" / p.name)
    lab = DPTLabeler("depth", **SMALL_DPT)
    r = labeling.label_folder(root, lab, progress=False)
    assert r["labelled"] == 4 and r["out"] == root / "depth"
    got = sorted(str(p.relative_to(root / "depth")) for p in (root / "depth").rglob("*.png"))
    want = sorted(str(p.relative_to(root / "rgb")) for p in (root / "rgb").rglob("*.png"))
    assert got == want


def _rgb_shards(images, root, broken: str | None = None) -> str:
    """The images as the official per-modality RGB shards (2 shards), with captions beside them."""
    from fourm.data import official_layout as ol

    stems = _stems(images)
    for i, chunk in enumerate([stems[:2], stems[2:]]):
        samples = [(s, {"rgb": ("png", b"\x89PNG broken" if s == broken else (images / "rgb" / f"{s}.png").read_bytes()),
                        "caption": ("txt", b"a scene")}) for s in chunk]
        ol.write_sample_files(root, "wds", ol.shard_name(i), samples)
    return f"{root}/[rgb]/shard-{{00000..00001}}.tar"


def test_rgb_shards_are_labelled_into_aligned_label_shards(images, tmp_path, capsys):
    from fourm.tokenizers import layout

    path = _rgb_shards(images, tmp_path / "data", broken=_stems(images)[3])
    lab = DPTLabeler("depth", **SMALL_DPT)
    r = labeling.label_shards(path, lab, part=(0, 2), progress=False)
    assert r["labelled"] == 2 and r["out"] == tmp_path / "data" / "depth"
    assert sorted(p.name for p in (tmp_path / "data" / "depth").glob("*.tar")) == ["shard-00000.tar"]
    r = labeling.label_shards(path, lab, part=(1, 2), progress=False)
    assert r["labelled"] == 1 and r["bad"] == [f"shard-00001/{_stems(images)[3]}"]
    assert labeling.label_shards(path, lab, progress=False)["skipped"] == 2  # both shards there: nothing redone
    # the label shards read back beside the RGB ones, key by key, and equal the labeller's own output
    src = layout.parse(f"{tmp_path / 'data'}/[rgb,depth]/shard-00000.tar")
    sample = next(layout.read_unit(src, src.units[0], ["rgb", "depth"]))
    assert sample.key == _stems(images)[0] and sample.files["depth"][0] == "png"
    got = np.asarray(Image.open(__import__("io").BytesIO(sample.files["depth"][1])))
    want = lab(labeling.read_rgb(images / "rgb" / f"{sample.key}.png")[None], [sample.key])[0]
    assert np.array_equal(got, want)
    # the command line takes the shard path; a path without rgb in its brackets is one clear error
    assert labeling.cli(["--in", path, "--labeler", "canny_edge", "--out", str(tmp_path / "edges")]) == 0
    assert "3 labelled, 0 already done, 1 unreadable images skipped" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "edges" / "canny_edge").glob("*.tar")) == ["shard-00000.tar",
                                                                                         "shard-00001.tar"]
    assert labeling.cli(["--in", f"{tmp_path / 'data'}/[caption]/shard-00000.tar", "--labeler", "canny_edge"]) == 2
    assert "names its RGB folder in brackets" in capsys.readouterr().err
