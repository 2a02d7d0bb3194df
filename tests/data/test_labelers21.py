"""The 4M-21 labelers on the world and on images whose answer is known, and their serialized forms."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fourm.data import labelers21 as L21
from fourm.data import labeling
from fourm.data import serialize as S
from fourm.data.layouts import FOURM_MODALITIES


@pytest.fixture
def split(world_root, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(world_root / "train", root)
    return root


def _rgb(split, stem):
    return torch.from_numpy(FOURM_MODALITIES["rgb"].decode(FOURM_MODALITIES["rgb"].path(split, stem))).permute(2, 0, 1).float() / 255


def _square(size=64, lo=20, hi=44) -> torch.Tensor:
    img = torch.zeros(3, size, size)
    img[:, lo:hi, lo:hi] = 1.0
    return img


def test_canny_edges_lie_on_the_square_and_run_over_a_split(split):
    edges = L21.CannyEdges(sigma=1.0)(_square()[None], ["sq"])[0]
    ys, xs = np.nonzero(edges)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    on_border = (np.minimum(np.abs(ys - 20), np.abs(ys - 43)) <= 1) | (np.minimum(np.abs(xs - 20), np.abs(xs - 43)) <= 1)
    assert on_border.all() and len(ys) > 4 * 20
    r = labeling.label_folder(split, labeling.create_labeler("canny_edge", split / "rgb"))
    assert r["labelled"] == 8 and len(list((split / "canny_edge").glob("*.png"))) == 8


def test_sam_instances_are_the_world_objects_floor_and_walls_and_their_edges(split):
    stem = sorted(p.stem for p in (split / "rgb").iterdir())[0]
    inst = FOURM_MODALITIES["instance"].decode(FOURM_MODALITIES["instance"].path(split, stem))
    sem = FOURM_MODALITIES["semseg"].decode(FOURM_MODALITIES["semseg"].path(split, stem))
    masks = L21.SamInstances(L21.WorldInstances(split))(_rgb(split, stem)[None], [stem])[0]
    objects = len(np.unique(inst[inst > 0]))
    background = len({1, 2} & set(np.unique(sem[inst == 0])))
    assert masks.max() == objects + background and set(np.unique(masks)) == set(range(objects + background + 1)) - (
        {0} if (masks > 0).all() else set())
    for i in np.unique(inst[inst > 0]):  # every world object is one SAM instance, the same pixels
        assert len(np.unique(masks[inst == i])) == 1 and (masks == masks[inst == i][0]).sum() == (inst == i).sum()
    edges = L21.SamEdges(L21.WorldInstances(split))(_rgb(split, stem)[None], [stem])[0]
    from skimage.segmentation import find_boundaries

    assert np.array_equal(edges > 0, find_boundaries(masks, mode="inner"))
    # a query point lands in exactly one instance, whose box holds it
    for y, x in L21.query_points(masks, 5, seed=0):
        box = L21.instance_box(masks == masks[y, x])
        assert box[0] <= x * 999 / 63 + 1e-9 and box[2] >= int(x * 999 / 63) and box[1] <= y * 999 / 63 + 1e-9
    with pytest.raises(FileNotFoundError, match="instance masks are needed"):
        L21.WorldInstances(split / "nowhere").masks(None, stem)


def test_color_palette_finds_the_colours_largest_first_and_serializes():
    from skimage.color import rgb2lab

    img = torch.zeros(3, 32, 32)
    img[0, :, :24] = 1.0  # red on three quarters
    img[2, :, 24:] = 1.0  # blue on one quarter
    palettes = L21.ColorPalette(max_colours=3)(img[None], ["x"])[0]
    assert sorted(palettes) == ["1", "2", "3"] and len(palettes["2"]) == 2
    red, blue = (rgb2lab(np.array([[c]], float))[0, 0] for c in ((1, 0, 0), (0, 0, 1)))
    np.testing.assert_allclose(palettes["2"][0], red, atol=0.01)
    np.testing.assert_allclose(palettes["2"][1], blue, atol=0.01)
    bins = [S.lab_bins(c) for c in palettes["2"]]
    assert S.palette_from_text(S.palette_to_text(bins)) == bins == [[53, 208, 195], [32, 207, 20]]


def test_metadata_of_known_images_and_of_the_world(split):
    black = L21.image_statistics(np.zeros((16, 16, 3)))
    assert black["brightness"] == 0 and black["entropy"] == 0 and black["colorfulness"] == 0
    halves = np.zeros((16, 16, 3))
    halves[:, 8:] = 1.0
    stats = L21.image_statistics(halves)
    assert stats["entropy"] == pytest.approx(1.0) and stats["contrast"] == pytest.approx(0.5)
    assert stats["original_width"] == 16 and stats["brightness"] == pytest.approx(0.5)

    stem = sorted(p.stem for p in (split / "rgb").iterdir())[0]
    values = L21.Metadata(split)(_rgb(split, stem)[None], [stem])[0]
    assert set(values) == set(S.METADATA_TYPES)
    inst = FOURM_MODALITIES["instance"].decode(FOURM_MODALITIES["instance"].path(split, stem))
    sem = FOURM_MODALITIES["semseg"].decode(FOURM_MODALITIES["semseg"].path(split, stem))
    assert values["instance_count"] == len(np.unique(inst[inst > 0]))
    assert values["walkability"] == pytest.approx((sem == 1).mean()) and values["objectness"] == pytest.approx((inst > 0).mean())
    caption = FOURM_MODALITIES["caption"].decode(FOURM_MODALITIES["caption"].path(split, stem))
    assert values["caption_length"] == len(caption.split()) and 0 < values["depth_mean"] < 20
    assert 0 <= values["geometric_complexity"] < 1
    bins = L21.metadata_bins(values)
    assert all(0 <= b <= 999 for b in bins.values())
    assert S.metadata_from_chunks(S.metadata_to_chunks(bins)) == bins
    # a flat wall has no geometric complexity; a ridge of alternating normals has a lot
    flat = L21.scene_statistics(np.zeros((16, 16), int), np.full((16, 16), 2), np.dstack([np.zeros((16, 16))] * 2 + [np.ones((16, 16))]), None)
    assert flat["geometric_complexity"] == pytest.approx(0.0) and flat["semantic_diversity"] == 0.0
    ridge = np.zeros((16, 16, 3))
    ridge[:, ::2, 0], ridge[:, 1::2, 0], ridge[..., 2] = 0.8, -0.8, 0.6
    assert L21.scene_statistics(np.zeros((16, 16), int), np.full((16, 16), 2), ridge, None)["geometric_complexity"] > 0.3
    r = labeling.label_folder(split, labeling.create_labeler("metadata", split / "rgb"))
    assert r["labelled"] == 8 and json.loads((split / "metadata" / f"{stem}.json").read_text()) == pytest.approx(values)


def test_vit_maps_are_patch_14_grids_and_local_weights_load(split, tmp_path):
    images = torch.stack([_rgb(split, s) for s in sorted(p.stem for p in (split / "rgb").iterdir())[:2]])
    maps = L21.VitFeatures("vit_small_patch14_dinov2", "dinov2")(images, ["a", "b"])
    assert maps[0].shape == (384, 16, 16) and maps[0].dtype == np.float16  # 224 / 14 = 16: the 4M-21 DINOv2 grid
    glob = L21.VitFeatures("vit_small_patch14_dinov2", "dinov2", global_=True)
    assert glob.modality == "dinov2_global" and glob(images, ["a", "b"])[0].shape == (384,)
    # real weights come from a local file: write other (seed 1) weights and load them through `checkpoint`
    other = L21.VitFeatures("vit_small_patch14_dinov2", "dinov2", seed=1)
    from safetensors.torch import save_file

    save_file(other.net.state_dict(), tmp_path / "w.safetensors")
    loaded = L21.VitFeatures("vit_small_patch14_dinov2", "dinov2", checkpoint=str(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(loaded(images, ["a", "b"])[0], other(images, ["a", "b"])[0])
    assert not np.array_equal(maps[0], other(images, ["a", "b"])[0])
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        L21.VitFeatures("vit_small_patch14_dinov2", checkpoint=str(tmp_path / "missing.pth"))


def test_human_poses_from_synthetic_parameters_serialize_and_come_back_to_bin_precision():
    rng = np.random.default_rng(0)
    people = []
    for _ in range(2):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        people.append({"box": sorted(rng.uniform(0, 1, 2)) + sorted(rng.uniform(0, 1, 2)), "global_orient": q,
                       "betas": rng.normal(0, 1.5, 10), "camera": rng.normal(0, 1, 3),
                       "pose_tokens": rng.integers(0, 1024, 8)})
    text = S.poses_to_text([L21.pose_from_params(p) for p in people])
    assert text.startswith("human ") and text.count("human") == 2 and text.count(" pose ") == 2
    back = [L21.params_from_pose(p) for p in S.poses_from_text(text)]
    for p, b in zip(people, back):
        np.testing.assert_allclose(b["global_orient"], p["global_orient"], atol=1 / 999 + 1e-9)
        np.testing.assert_allclose(b["betas"], np.clip(p["betas"], -5, 5), atol=5 / 999 + 1e-9)
        np.testing.assert_allclose(b["camera"], np.clip(p["camera"], -3, 3), atol=3 / 999 + 1e-9)
        assert b["pose_tokens"] == [int(t) for t in p["pose_tokens"]]

    class NoPeople(L21.HumanPoseSource):
        def people(self, image):
            return []

    assert S.poses_to_text([L21.pose_from_params(p) for p in NoPeople().people(torch.zeros(3, 8, 8))]) == "none"


def test_cli_writes_a_named_global_embedding_folder(split, capsys):
    from fourm.cli import main

    rc = main(["label", "--in", str(split), "--labeler", "vit_global", "--name", "clip", "--batch-size", "4"])
    assert rc == 0 and "8 labelled" in capsys.readouterr().out
    files = sorted((split / "clip_global").glob("*.npy"))
    assert len(files) == 8 and np.load(files[0]).shape == (384,)


def test_t5_caption_embeds_each_caption_at_t5_xxl_width_and_names_a_missing_model(split, capsys):
    assert labeling.cli(["--in", str(split), "--labeler", "t5_caption"]) == 0
    stems = sorted(p.stem for p in (split / "caption").glob("*.txt"))
    embs = {s: np.load(split / "t5_caption" / f"{s}.npy") for s in stems}
    for s, e in embs.items():
        words = (split / "caption" / f"{s}.txt").read_text().split()
        assert e.dtype == np.float16 and e.shape == (min(len(words), 76) + 1, 4096)  # a row a word, then end of text
    enc = L21.HashedWordEncoder()
    a, b, c = enc.embed(["a red cube", "a red cube", "a blue cube"])
    assert np.array_equal(a, b) and not np.allclose(a, c)
    capsys.readouterr()
    assert labeling.cli(["--in", str(split), "--labeler", "t5_caption", "--checkpoint", str(split / "no-t5")]) == 2
    err = capsys.readouterr().err  # without transformers: what to install; with it: the missing folder
    assert f"--checkpoint {split / 'no-t5'}: no such file or folder" in err  # checked before any model is built


def test_clip_maps_projected_to_the_clip_space():
    """`project: true` maps each patch token through the model's head: CLIP-B/16 maps of 512 channels (the width the
    official CLIP tokenizer takes), the same as projecting the unprojected map's tokens by hand."""
    import torch

    from fourm.data.labelers21 import VitFeatures

    images = torch.rand(2, 3, 64, 64)
    proj = VitFeatures(model="vit_base_patch16_clip_224", folder="clip", project=True, seed=3)
    maps = proj(images, ["a", "b"])
    assert maps[0].shape == (512, 14, 14)
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        tokens = proj.net.forward_features((x - proj.mean) / proj.std)[:, proj.net.num_prefix_tokens:]
        by_hand = proj.net.head(tokens)[0].T.reshape(512, 14, 14)
    assert np.allclose(maps[0], by_hand.numpy(), atol=1e-2)
