"""The standard layouts load with their real consumers and carry the world's labels exactly."""
import json

import numpy as np
import pytest

from fourm.data import world
from fourm.data.layouts import FOURM_MODALITIES, SPLIT_NAMES, scene_class, write_layouts


@pytest.fixture(scope="module")
def layouts_root(world_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    write_layouts(world_root, out)
    return out


def _world(world_root, split, modality, stem):
    return FOURM_MODALITIES[modality].decode(FOURM_MODALITIES[modality].path(world_root / split, stem))


def test_imagefolder(world_root, layouts_root):
    from torchvision.datasets import ImageFolder

    for split in ("train", "val"):
        ds = ImageFolder(str(layouts_root / "in1k" / split))
        assert len(ds) == len(list((world_root / split / "rgb").iterdir()))
        for path, target in ds.samples:
            stem = path.rsplit("/", 1)[1].split(".")[0]
            expected = scene_class(_world(world_root, split, "instance", stem), _world(world_root, split, "det", stem))
            assert ds.classes[target] == expected
        img, _ = ds[0]
        assert img.size == (64, 64)
    meta = json.loads((layouts_root / "in1k" / "meta.json").read_text())
    assert meta["classes"] == world.CLASSES


def test_coco_masks_and_boxes_match_the_world(world_root, layouts_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        coco = COCO(str(layouts_root / "coco" / "annotations" / f"instances_{SPLIT_NAMES['coco'][split]}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == world.CLASSES
        for img in coco.loadImgs(coco.getImgIds()):
            stem = img["file_name"][:-4]
            assert (layouts_root / "coco" / SPLIT_NAMES["coco"][split] / img["file_name"]).exists()
            inst = _world(world_root, split, "instance", stem)
            boxes = _world(world_root, split, "det", stem)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert len(anns) == len(boxes) > 0
            for i, (ann, box) in enumerate(zip(anns, boxes), start=1):
                np.testing.assert_array_equal(coco.annToMask(ann), (inst == i).astype(np.uint8))
                assert ann["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
                assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]  # tight
                assert coco.loadCats(ann["category_id"])[0]["name"] == box[4]
                assert ann["area"] == (inst == i).sum() and ann["iscrowd"] == 0


def test_mmdet_coco_dataset_pipeline(world_root, layouts_root):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        ds = CocoDataset(
            data_root=str(layouts_root / "coco"),
            ann_file="annotations/instances_val2017.json",
            data_prefix=dict(img="val2017/"),
            metainfo=dict(classes=tuple(world.CLASSES)),
            filter_cfg=None,
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True)],
        )
        assert len(ds) == 4
        for i in range(len(ds)):
            out = ds[i]
            stem = out["img_path"].rsplit("/", 1)[1][:-4]
            inst = _world(world_root, "val", "instance", stem)
            boxes = _world(world_root, "val", "det", stem)
            assert out["img"].shape == (64, 64, 3)
            masks = out["gt_masks"].to_ndarray()
            assert masks.shape == (len(boxes), 64, 64)
            for k, box in enumerate(boxes):
                np.testing.assert_array_equal(masks[k], inst == k + 1)
                assert world.CLASSES[out["gt_bboxes_labels"][k]] == box[4]
            np.testing.assert_allclose(out["gt_bboxes"].numpy(), np.array([b[:4] for b in boxes], np.float32))


def test_mmseg_ade20k_dataset(world_root, layouts_root):
    from mmengine.registry import DefaultScope
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmseg"):
        ds = ADE20KDataset(
            data_root=str(layouts_root / "ade20k"),
            data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True)],
        )
        assert len(ds) == 8
        out = ds[3]
        stem = out["img_path"].rsplit("/", 1)[1][:-4]
        sem = _world(world_root, "train", "semseg", stem)
        # reduce_zero_label: world id k >= 1 becomes k - 1 (floor 0, wall 1, objects 2..), nothing is ignored
        np.testing.assert_array_equal(out["gt_seg_map"], sem.astype(np.int64) - 1)
        assert out["img"].shape == (64, 64, 3)


def test_mmseg_nyu_depth_dataset(world_root, layouts_root):
    from mmengine.registry import DefaultScope
    from mmseg.datasets import NYUDataset
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmseg"):
        ds = NYUDataset(
            data_root=str(layouts_root / "nyuv2"),
            data_prefix=dict(img_path="images/test", depth_map_path="annotations/test"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3)],
        )
        assert len(ds) == 4
        out = ds[1]
        stem = out["img_path"].rsplit("/", 1)[1][:-4]
        depth = _world(world_root, "val", "depth", stem)
        np.testing.assert_allclose(np.squeeze(out["gt_depth_map"]), depth, atol=1e-6)
        assert 0.5 < depth.min() and depth.max() < 20
    sem = (layouts_root / "nyuv2" / "semseg" / "test" / f"{stem}.png").read_bytes()
    assert sem == FOURM_MODALITIES["semseg"].path(world_root / "val", stem).read_bytes()


def test_layouts_are_idempotent(world_root, layouts_root):
    jpg = layouts_root / "coco" / "train2017" / "000000.jpg"
    before = jpg.stat().st_mtime_ns
    write_layouts(world_root, layouts_root, which=("coco",), splits=("train",))
    assert jpg.stat().st_mtime_ns == before
