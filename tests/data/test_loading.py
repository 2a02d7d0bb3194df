"""MultimodalFolder reads the 4M layout; AlignedAugment keeps every modality aligned; bad files are never silent."""
import shutil

import numpy as np
import pytest
import torch

from fourm.data import world
from fourm.data.loading import AlignedAugment, CorruptFileError, MultimodalFolder, collate

ALL = ["rgb", "depth", "normal", "semseg", "instance", "det", "caption"]


def test_sample_types_and_values(world_root):
    ds = MultimodalFolder(world_root / "train", ALL)
    assert len(ds) == 8
    s = ds[3]
    assert s["stem"] == "000003"
    assert s["rgb"].shape == (3, 64, 64) and s["rgb"].dtype == torch.float32 and 0 <= s["rgb"].min() <= s["rgb"].max() <= 1
    assert s["depth"].shape == (1, 64, 64) and s["depth"].min() > 0.5
    assert s["semseg"].dtype == torch.int64 and s["instance"].shape == (64, 64)
    assert torch.allclose(s["normal"].norm(dim=0), torch.ones(64, 64), atol=1e-5)
    assert isinstance(s["caption"], str) and isinstance(s["det"], list)
    assert int(s["instance"].max()) == len(s["det"])
    batch = collate([ds[0], ds[1]])
    assert batch["rgb"].shape == (2, 3, 64, 64) and len(batch["det"]) == 2 and len(batch["caption"]) == 2


def _mask_box(mask):
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


@pytest.mark.parametrize("seed", range(6))
def test_boxes_stay_tight_around_instances_after_crop_and_flip(world_root, seed):
    aug = AlignedAugment(64, scale=(0.2, 1.0), flip_prob=0.5, generator=torch.Generator().manual_seed(seed))
    ds = MultimodalFolder(world_root / "train", ["rgb", "instance", "semseg", "det"])
    tight = 0
    for i in range(len(ds)):
        raw = ds[i]
        s = aug(raw)
        names = [b[4] for b in raw["det"]]  # classes are distinct within a scene: a class names an instance
        kept = {b[4] for b in s["det"]}
        for x0, y0, x1, y1, cls in s["det"]:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            mask = s["instance"] == names.index(cls) + 1
            if mask.any():
                mx0, my0, mx1, my1 = _mask_box(mask)
                # the mask is inside its box; a box cut by the crop border is not tight, every other edge is
                assert mx0 >= x0 - 1 and my0 >= y0 - 1 and mx1 <= x1 + 1 and my1 <= y1 + 1, (cls, s["det"])
                if 0 < x0 and 0 < y0 and x1 < 64 and y1 < 64:
                    assert max(abs(mx0 - x0), abs(my0 - y0), abs(mx1 - x1), abs(my1 - y1)) <= 1.0, (cls, s["det"])
                    tight += 1
                assert torch.all(s["semseg"][mask] == world.SEMSEG_CLASSES.index(cls))
        for k, cls in enumerate(names, start=1):  # an instance still visible keeps its box
            if (s["instance"] == k).sum() > 0:
                assert cls in kept
    assert tight > 0, "some boxes must lie inside the crop"


def test_rgb_and_labels_stay_aligned(world_root):
    ds = MultimodalFolder(world_root / "train", ["rgb", "semseg", "depth", "instance"])
    palette = torch.rand(len(world.SEMSEG_CLASSES), 3, generator=torch.Generator().manual_seed(0))
    aug = AlignedAugment(48, scale=(0.3, 0.6), flip_prob=0.5, generator=torch.Generator().manual_seed(1))
    for i in range(4):
        s = ds[i]
        s["rgb"] = palette[s["semseg"]].permute(2, 0, 1)  # an image whose colours encode its classes
        t = aug(s)
        # away from class edges, bilinear rgb must equal the colour of the nearest-resampled class
        sem = t["semseg"]
        interior = torch.ones_like(sem, dtype=torch.bool)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                interior &= torch.roll(sem, (dr, dc), (0, 1)) == sem
        interior[[0, -1]] = False
        interior[:, [0, -1]] = False
        assert interior.sum() > 100
        err = (t["rgb"].permute(1, 2, 0)[interior] - palette[sem[interior]]).abs().max()
        assert err < 1e-4
        assert t["depth"].shape == (1, 48, 48)
        assert torch.all((t["instance"] > 0) == (t["semseg"] >= 3))


def test_flip_negates_normal_x_and_mirrors_everything(world_root):
    ds = MultimodalFolder(world_root / "val", ["rgb", "normal", "instance", "det", "caption"])
    s = ds[0]
    t = AlignedAugment(64, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)(s)
    assert torch.allclose(t["rgb"], s["rgb"].flip(-1), atol=1e-5)
    assert torch.equal(t["instance"], s["instance"].flip(-1))
    assert torch.equal(t["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(t["normal"][1:], s["normal"][1:].flip(-1))
    assert t["caption"] == s["caption"]
    assert [b[4] for b in t["det"]] == [b[4] for b in s["det"]]
    for (x0, y0, x1, y1, _), (a0, b0, a1, b1, _) in zip(t["det"], s["det"]):
        assert (x0, y0, x1, y1) == (64 - a1, b0, 64 - a0, b1)


def test_corrupt_and_missing_files_are_reported(world_root, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(world_root / "train", root)
    (root / "depth" / "000002.png").write_bytes(b"not a png")
    (root / "semseg" / "000005.png").unlink()
    with pytest.raises(CorruptFileError, match="semseg/000005.png"):
        MultimodalFolder(root, ["rgb", "depth", "semseg"])
    ds = MultimodalFolder(root, ["rgb", "depth"])
    with pytest.raises(CorruptFileError, match="depth/000002.png"):
        ds[2]
    with pytest.warns(UserWarning, match="000005"):
        ds = MultimodalFolder(root, ["rgb", "depth", "semseg"], on_error="skip")
    assert len(ds) == 7 and [p for p, _ in ds.skipped] == [str(root / "semseg" / "000005.png")]
    with pytest.warns(UserWarning, match="000002"):
        s = ds[2]
    assert s["stem"] == "000003"  # the next good sample is served
    assert len(ds.skipped) == 2 and ds.skipped[1][0].endswith("depth/000002.png")
    with pytest.warns(UserWarning):
        ds2 = MultimodalFolder(root, ["rgb", "depth"], on_error="skip", verify=True)
    assert len(ds2) == 7 and "000002" not in ds2.stems and len(ds2.skipped) == 1


def test_feature_folder_and_clear_errors(world_root, tmp_path):
    with pytest.raises(KeyError, match=r"unknown modality 'clip_feat'.*register_spec"):
        MultimodalFolder(world_root / "train", ["rgb", "clip_feat"])  # no spec: never guessed to be a feature map
    with pytest.raises(FileNotFoundError, match="feat_missing"):
        MultimodalFolder(world_root / "train", ["rgb", "feat_missing"])
    with pytest.raises(ValueError, match="on_error"):
        MultimodalFolder(world_root / "train", ["rgb"], on_error="ignore")
    root = tmp_path / "split"
    shutil.copytree(world_root / "train" / "rgb", root / "rgb")
    (root / "feat_x").mkdir()  # feat_*: the family of feature maps a labeler writes
    for p in (root / "rgb").iterdir():
        np.save(root / "feat_x" / f"{p.stem}.npy", np.full((4, 8, 8), float(p.stem), np.float16))
    s = AlignedAugment(32, flip_prob=0.0)(MultimodalFolder(root, ["rgb", "feat_x"])[5])
    assert s["rgb"].shape == (3, 32, 32) and s["feat_x"].shape == (4, 4, 4)
    assert torch.allclose(s["feat_x"], torch.full((4, 4, 4), 5.0))
