"""Pseudo-labelling: registry, batched + resumable runs, ground-truth and timm labelers, clear input errors."""
import filecmp
import json
import shutil

import numpy as np
import pytest

from fourm.data import labeling
from fourm.data.loading import MultimodalFolder


@pytest.fixture
def split(world_root, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(world_root / "train" / "rgb", root / "rgb")
    shutil.copytree(world_root / "train" / "depth", root / "depth")
    shutil.copy(world_root / "train" / "world.json", root / "world.json")
    return root


def test_registry_lists_the_builtins():
    assert {"timm_features", "world_gt_depth", "world_gt_semseg", "world_gt_det", "world_gt_caption"} <= set(labeling.LABELERS)
    with pytest.raises(KeyError, match="registered"):
        labeling.create_labeler("clip_large", ".")


def test_world_gt_copies_ground_truth_and_resumes(split, tmp_path):
    out = tmp_path / "depth_copy"
    lab = labeling.create_labeler("world_gt_depth", split / "rgb")
    r = labeling.label_folder(split, lab, out, batch_size=3)
    assert r == {"labelled": 8, "skipped": 0, "bad": [], "out": out}
    for p in (split / "depth").iterdir():
        assert filecmp.cmp(p, out / p.name, shallow=False)  # PNG decode + encode round-trips exactly
    (out / "000004.png").unlink()
    before = (out / "000001.png").stat().st_mtime_ns
    assert labeling.label_folder(split, lab, out)["labelled"] == 1
    assert (out / "000001.png").stat().st_mtime_ns == before
    assert filecmp.cmp(split / "depth" / "000004.png", out / "000004.png", shallow=False)


def test_world_gt_names_a_missing_ground_truth_file(split, tmp_path):
    (split / "depth" / "000006.png").unlink()
    lab = labeling.create_labeler("world_gt_depth", split / "rgb")
    with pytest.raises(FileNotFoundError, match="depth/000006.png"):
        labeling.label_folder(split, lab, tmp_path / "o")


def test_timm_features_are_batched_deterministic_and_loadable(split):
    lab = labeling.create_labeler("timm_features", split / "rgb")
    r = labeling.label_folder(split, lab, batch_size=5)
    assert r["labelled"] == 8 and r["out"] == split / "feat_resnet18"
    f = np.load(split / "feat_resnet18" / "000003.npy")
    assert f.dtype == np.float16 and f.shape == (256, 4, 4)  # resnet18 stage 3: stride 16
    # batch composition does not change a label, and weights are seeded: one image alone gives the same features
    lab2 = labeling.create_labeler("timm_features", split / "rgb")
    img = labeling.read_rgb(split / "rgb" / "000003.png")[None]
    np.testing.assert_allclose(lab2(img, ["000003"])[0].astype(np.float32), f.astype(np.float32), rtol=1e-2, atol=1e-3)
    other = np.load(split / "feat_resnet18" / "000004.npy")
    assert not np.allclose(f, other)
    ds = MultimodalFolder(split, ["rgb", "feat_resnet18"])
    assert tuple(ds[0]["feat_resnet18"].shape) == (256, 4, 4)


def test_unreadable_input_is_named(split, tmp_path, capsys):
    (split / "rgb" / "000002.png").write_bytes(b"\x89PNG broken")
    lab = labeling.create_labeler("world_gt_depth", split / "rgb")
    with pytest.raises(ValueError, match="rgb/000002.png"):
        labeling.label_folder(split, lab, tmp_path / "o", on_bad_image="stop")
    assert labeling.cli(["--in", str(split), "--labeler", "world_gt_depth", "--out", str(tmp_path / "o"),
                         "--on-bad-image", "stop"]) == 2
    assert "000002.png" in capsys.readouterr().err
    # by default the image is skipped, counted and listed in the run's record
    assert labeling.cli(["--in", str(split), "--labeler", "world_gt_depth", "--out", str(tmp_path / "o")]) == 0
    assert "7 labelled, 0 already done, 1 unreadable images skipped" in capsys.readouterr().out
    assert not (tmp_path / "o" / "000002.png").exists()
    assert labeling.cli(["--in", str(tmp_path / "nope"), "--labeler", "world_gt_depth"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_labels_a_split(split, tmp_path, capsys):
    assert labeling.cli(["--in", str(split), "--labeler", "world_gt_depth", "--out", str(tmp_path / "d"), "--batch-size", "4"]) == 0
    assert "8 labelled" in capsys.readouterr().out
    assert len(list((tmp_path / "d").glob("*.png"))) == 8
    record = json.loads((tmp_path / "d" / ".label_log.jsonl").read_text())
    assert record["labeler"] == "world_gt_depth" and record["labelled"] == 8 and record["bad_images"] == []
