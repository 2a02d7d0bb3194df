"""The synthetic world: determinism, and that every modality agrees with the same analytic geometry."""
import filecmp
import json

import numpy as np
import pytest

from fourm.data import world
from fourm.data.layouts import FOURM_MODALITIES, WORLD_MODALITIES
from fourm.modalities.codecs import decode_depth, decode_normal

SIZE = 64


def _backproject(scene):
    """World points of every pixel from the rendered depth and the returned camera."""
    K, R, C = (np.array(scene["camera"][k]) for k in ("K", "R", "C"))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    d_cam = np.stack([(cols + 0.5 - K[0, 2]) / K[0, 0], (rows + 0.5 - K[1, 2]) / K[1, 1], np.ones((SIZE, SIZE))], -1)
    return C + (scene["depth"][..., None].astype(np.float64) * d_cam) @ R, d_cam @ R


def _room_depth(scene, d_world):
    """Depth of the room (floor y=0, back wall z=-back, side walls x=+-side) along every ray, computed here."""
    C = np.array(scene["camera"]["C"])
    room = scene["camera"]["room"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = [-C[1] / d_world[..., 1], (-room["back"] - C[2]) / d_world[..., 2],
              (room["side"] - C[0]) / d_world[..., 0], (-room["side"] - C[0]) / d_world[..., 0]]
    return np.min([np.where(t > 0, t, np.inf) for t in ts], axis=0)


@pytest.mark.parametrize("index", range(6))
def test_depth_lies_on_the_analytic_surfaces(index):
    scene = world.render_scene(3, index, SIZE)
    points, d_world = _backproject(scene)
    room = _room_depth(scene, d_world)
    assert scene["objects"], "every scene shows at least one object"
    for inst, obj in enumerate(scene["objects"], start=1):
        mask = scene["instance"] == inst
        assert mask.sum() > 0
        sdf = world.signed_distance(obj, points[mask])
        assert np.abs(sdf).max() < 2e-4 * max(1.0, scene["depth"][mask].max()), obj["class"]
        assert np.all(scene["depth"][mask] < room[mask]), f"{obj['class']} must be in front of the room"
    background = scene["instance"] == 0
    np.testing.assert_allclose(scene["depth"][background], room[background], rtol=1e-5)


@pytest.mark.parametrize("index", range(4))
def test_normals_are_unit_and_match_the_geometry(index):
    scene = world.render_scene(5, index, SIZE)
    n = scene["normal"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    R = np.array(scene["camera"]["R"])
    points, _ = _backproject(scene)
    # objects: the normal is the gradient of the signed distance (finite differences, independent of the renderer)
    for inst, obj in enumerate(scene["objects"], start=1):
        p = points[scene["instance"] == inst]
        eps = 1e-4
        grad = np.stack([(world.signed_distance(obj, p + e) - world.signed_distance(obj, p - e)) / (2 * eps)
                         for e in np.eye(3) * eps], -1)
        grad_cam = grad @ R.T
        grad_cam /= np.linalg.norm(grad_cam, axis=-1, keepdims=True)
        cos = np.sum(grad_cam * n[scene["instance"] == inst], -1)
        # pixels exactly on an edge/apex have an ill-defined gradient; the faces must agree
        assert np.median(cos) > 0.999 and np.mean(cos > 0.99) > 0.9, obj["class"]
    # floor: normals from finite differences of the back-projected depth map, in the camera frame
    cam_pts = (points - np.array(scene["camera"]["C"])) @ R.T
    du, dv = cam_pts[1:-1, 2:] - cam_pts[1:-1, :-2], cam_pts[2:, 1:-1] - cam_pts[:-2, 1:-1]
    fd = np.cross(dv, du)  # (down x right) points back at the camera
    fd /= np.linalg.norm(fd, axis=-1, keepdims=True)
    sem = scene["semseg"]
    floor = np.ones_like(sem[1:-1, 1:-1], bool)
    for dr, dc in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]:
        floor &= sem[1 + dr:SIZE - 1 + dr, 1 + dc:SIZE - 1 + dc] == world.FLOOR_ID
    assert floor.sum() > 100
    cos = np.sum(fd[floor] * n[1:-1, 1:-1][floor], -1)
    assert cos.min() > 0.9999
    assert np.all(n[sem == world.FLOOR_ID][:, 2] < 0), "surfaces seen by the camera face it (n_z < 0)"


@pytest.mark.parametrize("index", range(8))
def test_boxes_are_tight_and_classes_agree(index):
    scene = world.render_scene(1, index, SIZE)
    inst, sem = scene["instance"], scene["semseg"]
    assert inst.max() == len(scene["boxes"]) == len(scene["objects"])
    for i, (x0, y0, x1, y1, cls) in enumerate(scene["boxes"], start=1):
        rows, cols = np.nonzero(inst == i)
        assert [x0, y0, x1, y1] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert np.all(sem[inst == i] == world.SEMSEG_CLASSES.index(cls))
        assert scene["objects"][i - 1]["class"] == cls
    # pixels of an object class carry an instance, and room pixels carry none
    assert np.all((sem >= 3) == (inst > 0))
    assert set(np.unique(sem)) <= set(range(len(world.SEMSEG_CLASSES))) - {0}


@pytest.mark.parametrize("index", range(8))
def test_caption_names_every_visible_object_and_the_floor(index):
    scene = world.render_scene(2, index, SIZE)
    for _, _, _, _, cls in scene["boxes"]:
        assert cls in scene["caption"]
    for obj in scene["objects"]:
        assert obj["color"] in scene["caption"]
    assert "floor" in scene["caption"]
    areas = {c: (scene["semseg"] == world.SEMSEG_CLASSES.index(c)).sum() for *_, c in scene["boxes"]}
    assert scene["scene_class"] == max(areas, key=areas.get)


def test_vectorised_renderer_equals_the_per_pixel_loop():
    # the screen-rectangle culling must never lose a pixel: compare with every object traced at every pixel
    size = 20
    for index in range(2):
        fast = world.render_scene(4, index, size)
        slow = world.render_scene_per_pixel(4, index, size)
        np.testing.assert_array_equal(fast["semseg"].reshape(-1), slow["semseg"])
        np.testing.assert_allclose(fast["depth"].reshape(-1), slow["depth"], rtol=1e-6)


def test_generate_is_deterministic_resumable_and_seeded(tmp_path):
    a = world.generate(str(tmp_path / "a"), num=3, size=SIZE, seed=7)
    b = world.generate(str(tmp_path / "b"), num=3, size=SIZE, seed=7)
    c = world.generate(str(tmp_path / "c"), num=3, size=SIZE, seed=8)
    for m in WORLD_MODALITIES:
        ext = FOURM_MODALITIES[m].ext
        names = sorted(p.name for p in (a / m).iterdir())
        assert names == [f"{i:06d}{ext}" for i in range(3)]
        match, mismatch, errors = filecmp.cmpfiles(a / m, b / m, names, shallow=False)
        assert match == names, m
        if m in ("rgb", "depth", "semseg"):
            assert not any(filecmp.cmp(a / m / n, c / m / n, shallow=False) for n in names), m
    # resumable: a removed file is re-rendered identically, others are left alone
    victim = a / "depth" / "000001.png"
    kept = a / "rgb" / "000001.png"
    before = kept.stat().st_mtime_ns
    victim.unlink()
    world.generate(str(tmp_path / "a"), num=3, size=SIZE, seed=7)
    assert filecmp.cmp(victim, b / "depth" / "000001.png", shallow=False)
    assert kept.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="world.json"):
        world.generate(str(tmp_path / "a"), num=3, size=SIZE, seed=9)
    # worker processes write the same bytes
    w = world.generate(str(tmp_path / "w"), num=3, size=SIZE, seed=7, workers=2)
    for m in WORLD_MODALITIES:
        names = sorted(p.name for p in (a / m).iterdir())
        assert filecmp.cmpfiles(a / m, w / m, names, shallow=False)[0] == names
    # val scenes differ from train scenes of the same seed
    v = world.generate(str(tmp_path / "a"), num=1, size=SIZE, seed=7, split="val")
    assert not filecmp.cmp(v / "rgb" / "000000.png", a / "rgb" / "000000.png", shallow=False)


def test_files_round_trip_the_rendered_scene(world_root):
    split = world_root / "train"
    meta = json.loads((split / "world.json").read_text())
    scene = world.render_scene(meta["scene_seed"], 2, meta["size"])
    assert np.abs(decode_depth(split / "depth" / "000002.png") - scene["depth"]).max() <= 0.0005 + 1e-6
    n = decode_normal(split / "normal" / "000002.png")
    assert np.sum(n * scene["normal"], -1).min() > 0.999
    np.testing.assert_array_equal(FOURM_MODALITIES["instance"].decode(split / "instance" / "000002.png"), scene["instance"])
    np.testing.assert_array_equal(FOURM_MODALITIES["rgb"].decode(split / "rgb" / "000002.png"), scene["rgb"])
    assert FOURM_MODALITIES["det"].decode(split / "det" / "000002.json") == scene["boxes"]
    assert FOURM_MODALITIES["caption"].decode(split / "caption" / "000002.txt") == scene["caption"]


def test_cli_refuses_a_different_seed_in_one_line(tmp_path, capsys):
    assert world.cli(["--out", str(tmp_path), "--num", "1", "--size", "32", "--seed", "0"]) == 0
    assert world.cli(["--out", str(tmp_path), "--num", "1", "--size", "32", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "world.json" in err and "Traceback" not in err


def test_classes_have_a_typical_colour_but_not_always():
    """Colour is a strong, imperfect cue for the class: P(typical) = p + (1 - p) / #colours, measured over 400 scenes."""
    objects = [o for i in range(400) for o in world.sample_scene(0, i, 64).objects]
    typical = np.mean([o.color == world.TYPICAL_COLOR[o.cls] for o in objects])
    expected = world.TYPICAL_COLOR_PROB + (1 - world.TYPICAL_COLOR_PROB) / len(world.COLORS)
    assert len(objects) > 1000
    assert abs(typical - expected) < 0.04, (typical, expected)
    assert len(set(world.TYPICAL_COLOR.values())) == len(world.CLASSES)  # every class has its own colour
