"""One spec per modality: names, codecs, tensors, crop/resize/flip rules, metrics and pictures come from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fourm.modalities import ModalitySpec, folder_of, has_spec, register_spec, sequence_members, spec, specs
from fourm.modalities.metrics import METRICS


def test_both_names_of_a_modality_find_one_spec():
    assert spec("tok_depth@224") is spec("depth") and folder_of("tok_semseg@224") == "semseg"
    assert spec("det").token == "det" and folder_of("caption") == "caption"
    assert not has_spec("lidar")
    with pytest.raises(KeyError, match=r"unknown modality 'lidar'.*register_spec"):
        spec("lidar")


def test_every_named_metric_renderer_and_codec_exists():
    from fourm.tokenizers.vqvae import ADAPTERS

    for s in specs().values():
        assert s.metric is None or s.metric in METRICS, s.name
        assert s.tokenizer is None or s.tokenizer in ADAPTERS, s.name
        assert s.render is None or s.picture is not None
    with pytest.raises(ValueError, match="unknown codec 'gif'"):
        ModalitySpec("x", "gif")
    with pytest.raises(ValueError, match="value must be one of"):
        ModalitySpec("x", "npy", value="voxels")


def test_crop_rules_labels_stay_labels_and_normals_flip_their_x():
    ids = torch.tensor([[0, 0, 5, 5], [0, 0, 5, 5], [3, 3, 7, 7], [3, 3, 7, 7]])
    out = spec("semseg").crop_resize_flip(ids, (0, 0, 4, 4), 3, False)
    assert out.dtype == torch.int64 and set(out.unique().tolist()) <= {0, 3, 5, 7}  # nearest: no blended class
    rgb = torch.rand(3, 8, 8)
    assert spec("rgb").crop_resize_flip(rgb, (0, 0, 8, 8), 5, False).max() <= 1.0  # bilinear, clamped
    n = torch.nn.functional.normalize(torch.randn(3, 4, 4), dim=0)
    flipped = spec("normal").crop_resize_flip(n, (0, 0, 4, 4), 4, True)
    assert torch.equal(flipped[0], -n[0].flip(-1)) and torch.equal(flipped[1:], n[1:].flip(-1))
    assert torch.equal(spec("depth").hflip(n[:1]), n[:1].flip(-1))  # only normals negate a channel


def test_codecs_round_trip_through_the_spec(tmp_path):
    depth = np.array([[0.0, 1.234], [12.5, 65.0]], np.float32)
    spec("depth").write(tmp_path / "d.png", depth)
    assert np.allclose(spec("depth").decode(tmp_path / "d.png"), depth, atol=5e-4)
    boxes = [[1, 2, 3, 4, "cube"]]
    spec("det").write(tmp_path / "b.json", boxes)
    assert spec("det").decode(tmp_path / "b.json") == boxes
    assert spec("canny_edge").to_tensor(np.array([[0, 255]], np.uint8)).tolist() == [[[0.0, 1.0]]]


def test_pictures_and_sequence_members():
    assert spec("depth").picture(torch.full((1, 4, 4), 2.0)).shape == (4, 4, 3)
    assert spec("depth").picture(torch.linspace(-1, 1, 16).view(1, 4, 4)).shape == (4, 4, 3)  # relative depth
    assert spec("caption").picture("a red cube").dtype == np.uint8
    members = sequence_members()
    assert members["det"] == ("det.json", "crops") and members["color_palette"][1] == "variants"
    with pytest.raises(KeyError, match="has no renderer"):
        spec("metadata").picture({})


def test_a_registered_spec_is_found_by_both_names():
    register_spec(ModalitySpec("albedo_t", "png_rgb", token="tok_albedo_t@224", value="image", resize="bilinear"))
    try:
        assert spec("tok_albedo_t@224").name == "albedo_t"
        with pytest.raises(ValueError, match="already registered"):
            register_spec(ModalitySpec("albedo_t", "png_rgb"))
    finally:
        from fourm.modalities import unregister_spec

        unregister_spec("albedo_t")
    assert not has_spec("tok_albedo_t@224")
