"""A synthetic, aligned multimodal world: procedural rooms with analytic objects, ray cast with numpy.

Every scene is a room (floor, back wall, two side walls) seen by a pinhole camera, with 2-6 objects of
distinct classes standing on the floor (each class has a typical colour, used 80% of the time). Per pixel the
renderer finds the nearest analytic surface, so every modality comes from the same geometry: rgb (Lambertian
shading), metric depth, normals, semantic classes and instance ids; boxes and a caption are derived from those.
A scene is a pure function of (seed, index).

Conventions:
  world frame   X right, Y up, Z towards the camera (right-handed); the floor is y = 0.
  camera frame  x right, y down, z forward (OpenCV); depth is the z coordinate (not the ray length), normals
                are unit vectors in this frame, so surfaces facing the camera have n_z < 0.
  semseg        0 = void (never produced; ignore), 1 = floor, 2 = wall, 3 + i = CLASSES[i]  (see SEMSEG_CLASSES).
                An ADE20K-style file (0 = ignore, 1..K = classes) is therefore the semseg map itself.
  instance      0 = none (floor, walls), i >= 1 = the object of boxes[i - 1].
  boxes         [x0, y0, x1, y1, class_name] in pixel edges (x1, y1 exclusive), tight around the instance mask.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fourm.configs import parse_cli
from fourm.data.layouts import FOURM_MODALITIES, WORLD_MODALITIES, atomic_write_bytes

CLASSES = [
    "sphere", "cube", "brick", "cylinder", "cone", "pyramid",
    "torus", "ellipsoid", "octahedron", "prism", "hemisphere", "capsule",
]
SEMSEG_CLASSES = ["void", "floor", "wall", *CLASSES]
FLOOR_ID, WALL_ID = 1, 2

COLORS = {  # name -> linear albedo
    "red": (0.80, 0.06, 0.05), "green": (0.08, 0.55, 0.12), "blue": (0.06, 0.18, 0.80),
    "yellow": (0.90, 0.78, 0.06), "orange": (0.92, 0.38, 0.03), "purple": (0.40, 0.08, 0.60),
    "pink": (0.92, 0.40, 0.60), "cyan": (0.05, 0.70, 0.75), "white": (0.85, 0.85, 0.85),
    "black": (0.04, 0.04, 0.04), "brown": (0.35, 0.17, 0.06), "gray": (0.35, 0.35, 0.35),
}
FLOORS = ("wooden", "tiled", "carpeted", "stone")
WALLS = {"white": (0.80, 0.80, 0.78), "beige": (0.75, 0.66, 0.50), "light blue": (0.55, 0.68, 0.82),
         "light green": (0.60, 0.75, 0.58), "gray": (0.55, 0.55, 0.57)}
# Categories have a typical appearance, as in real data: each class has its own colour, used with this probability
# (otherwise any colour). Colour alone is then a strong but imperfect cue and shape decides the rest; without it no
# tiny CPU model got past chance / "floor and wall" on the demo's transfer tasks.
TYPICAL_COLOR = dict(zip(CLASSES, COLORS))
TYPICAL_COLOR_PROB = 0.8
SIZE_RANGE = (0.5, 1.25)  # metres, the scale of an object; "small" in its lowest quarter, "large" in its top quarter
DISTANCE_RANGE = (1.6, 4.0)  # metres from the camera, along the floor


# --- scene description ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class SceneObject:
    cls: str
    color: str
    size: float
    position: tuple[float, float]  # (x, z) of the base centre on the floor
    yaw: float

    @property
    def size_word(self) -> str:
        lo, hi = SIZE_RANGE
        return "small" if self.size < lo + 0.25 * (hi - lo) else "large" if self.size > lo + 0.75 * (hi - lo) else ""

    def to_dict(self) -> dict:
        return {"class": self.cls, "color": self.color, "size": self.size, "position": list(self.position), "yaw": self.yaw}


@dataclasses.dataclass
class Scene:
    size: int
    fov: float  # horizontal = vertical field of view, radians
    height: float  # camera height above the floor
    pitch: float  # downward tilt, radians
    back: float  # back wall at z = -back
    side: float  # side walls at x = +-side
    floor: str
    wall: str
    light: np.ndarray  # unit vector towards the light (world)
    objects: list[SceneObject]

    @property
    def focal(self) -> float:
        return self.size / 2 / math.tan(self.fov / 2)

    @property
    def rotation(self) -> np.ndarray:
        """World -> camera rotation (rows: camera x, y, z axes in world coordinates)."""
        s, c = math.sin(self.pitch), math.cos(self.pitch)
        return np.array([[1.0, 0.0, 0.0], [0.0, -c, s], [0.0, -s, -c]])

    @property
    def center(self) -> np.ndarray:
        return np.array([0.0, self.height, 0.0])

    def camera(self) -> dict:
        f, c = self.focal, self.size / 2
        return {"K": [[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], "R": self.rotation.tolist(), "C": self.center.tolist(),
                "room": {"back": self.back, "side": self.side}}


def sample_scene(seed: int, index: int, size: int = 224) -> Scene:
    """The scene description for (seed, index): camera, room, light and non-overlapping objects."""
    rng = np.random.default_rng([int(seed), int(index)])
    fov = math.radians(rng.uniform(55, 65))
    height = rng.uniform(1.3, 1.8)
    pitch = math.radians(rng.uniform(18, 28))
    back, side = rng.uniform(8.0, 10.0), rng.uniform(3.5, 4.5)
    floor = FLOORS[rng.integers(len(FLOORS))]
    wall = list(WALLS)[rng.integers(len(WALLS))]
    az, el = rng.uniform(-2.2, -0.9), math.radians(rng.uniform(35, 65))
    light = np.array([math.cos(el) * math.cos(az), math.sin(el), -math.cos(el) * math.sin(az)])
    scene = Scene(size, fov, height, pitch, back, side, floor, wall, light / np.linalg.norm(light), [])
    n = int(rng.integers(2, 7))
    classes = rng.choice(len(CLASSES), size=n, replace=False)
    typical = rng.random(n) < TYPICAL_COLOR_PROB
    any_color = rng.integers(len(COLORS), size=n)
    colors = [list(COLORS).index(TYPICAL_COLOR[CLASSES[ci]]) if t else a for ci, t, a in zip(classes, typical, any_color)]
    tan = math.tan(fov / 2) * 0.85
    for ci, co in zip(classes, colors):
        s = rng.uniform(*SIZE_RANGE)
        for _ in range(50):  # rejection sampling of a free, visible spot; give up on the object if none
            dist = rng.uniform(DISTANCE_RANGE[0], min(DISTANCE_RANGE[1], back - 1.2))
            x = rng.uniform(-1, 1) * min(dist * tan, side - 0.8)
            if all(math.hypot(x - o.position[0], -dist - o.position[1]) > 0.75 * (s + o.size) for o in scene.objects):
                scene.objects.append(SceneObject(CLASSES[ci], list(COLORS)[co], float(s), (float(x), float(-dist)),
                                                 float(rng.uniform(0, math.pi))))
                break
    return scene


# --- analytic shapes (local frame: base centre at the origin, y up) --------------------------------------------
_INF = np.inf


def _halfspaces(o, d, normals, offsets):
    """Ray interval inside {p : n_k . p <= c_k for all k}; returns (t_in, t_out, normal at entry)."""
    normals = np.asarray(normals, dtype=np.float64)
    norm = np.linalg.norm(normals, axis=1)
    normals, offsets = normals / norm[:, None], np.asarray(offsets, dtype=np.float64) / norm
    nd = _rotate(d, normals)  # (N, K) = d @ normals.T
    slack = offsets - normals @ o  # (K,), >= 0 where the origin is inside plane k
    with np.errstate(divide="ignore", invalid="ignore"):
        t = slack / nd
    t_enter = np.where(nd < 0, t, -_INF)
    t_exit = np.where(nd > 0, t, _INF)
    t_exit = np.where((nd == 0) & (slack < 0), -_INF, t_exit)
    k = np.argmax(t_enter, axis=1)
    t_in = np.take_along_axis(t_enter, k[:, None], 1)[:, 0]
    return t_in, t_exit.min(axis=1), normals[k]


def _sphere(o, d, center, radii):
    """Ray interval inside the ellipsoid |(p - center) / radii| <= 1, and the normal at entry."""
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (3,))
    oc, ds = (o - center) / radii, d / radii
    a = np.einsum("ij,ij->i", ds, ds)
    b = ds @ oc
    disc = b * b - a * (oc @ oc - 1.0)
    sq = np.sqrt(np.maximum(disc, 0))
    hit = disc > 0
    t_in = np.where(hit, (-b - sq) / a, _INF)
    t_out = np.where(hit, (-b + sq) / a, -_INF)
    n = (o + t_in[:, None] * d - center) / radii**2
    return t_in, t_out, n


def _vcylinder(o, d, radius):
    """Ray interval inside the infinite vertical cylinder x^2 + z^2 <= r^2."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = o[0] * d[:, 0] + o[2] * d[:, 2]
    c = o[0] ** 2 + o[2] ** 2 - radius**2
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_in = np.where(disc > 0, (-b - sq) / a, _INF)
        t_out = np.where(disc > 0, (-b + sq) / a, -_INF)
    p = o + np.where(np.isfinite(t_in), t_in, 0)[:, None] * d
    return t_in, t_out, p * [1.0, 0.0, 1.0]


def _vcone(o, d, radius, height):
    """Ray interval inside the solid cone with apex (0, height, 0) and base radius `radius` at y = 0 (unbounded below)."""
    k2 = (radius / height) ** 2
    wo = height - o[1]
    a = d[:, 0] ** 2 + d[:, 2] ** 2 - k2 * d[:, 1] ** 2
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    b = o[0] * d[:, 0] + o[2] * d[:, 2] + k2 * wo * d[:, 1]
    c = o[0] ** 2 + o[2] ** 2 - k2 * wo**2
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0))
    r1, r2 = (-b - sq) / a, (-b + sq) / a
    lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
    # a > 0: inside between the roots; a < 0: outside between them, and the lower nappe is the half-line below the apex
    down = d[:, 1] < 0
    t_in = np.where(a > 0, lo, np.where(down, hi, -_INF))
    t_out = np.where(a > 0, hi, np.where(down, _INF, lo))
    t_in = np.where(disc > 0, t_in, np.where(a < 0, -_INF, _INF))
    t_out = np.where(disc > 0, t_out, np.where(a < 0, _INF, -_INF))
    p = o + np.where(np.isfinite(t_in), t_in, 0)[:, None] * d
    n = np.stack([p[:, 0], k2 * (height - p[:, 1]), p[:, 2]], axis=1)
    return t_in, t_out, n


def _intersect(*parts):
    """Intersection of convex sets given as ray intervals: the latest entry wins (and gives the normal)."""
    t_ins = np.stack([p[0] for p in parts], 1)
    k = np.argmax(t_ins, axis=1)
    t_in = np.take_along_axis(t_ins, k[:, None], 1)[:, 0]
    t_out = np.min(np.stack([p[1] for p in parts], 1), axis=1)
    normals = np.stack([p[2] for p in parts], 1)
    n = normals[np.arange(len(k)), k]
    return np.where((t_in < t_out) & (t_in > 0), t_in, _INF), n


def _union(*hits):
    """Union of shapes seen from outside: the nearest hit wins."""
    ts = np.stack([h[0] for h in hits], 1)
    k = np.argmin(ts, axis=1)
    n = np.stack([h[1] for h in hits], 1)[np.arange(len(k)), k]
    return np.take_along_axis(ts, k[:, None], 1)[:, 0], n


def _slab(y0, y1):
    return ([[0, -1, 0], [0, 1, 0]], [-y0, y1])


def _box_planes(ex, ey, ez):
    return ([[1, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1]], [ex, ex, 0, 2 * ey, ez, ez])


def _pyramid_planes(a, h):
    return ([[h, a, 0], [-h, a, 0], [0, a, h], [0, a, -h], [0, -1, 0]], [a * h, a * h, a * h, a * h, 0])


def _prism_planes(a, h, length):
    return ([[h, a, 0], [-h, a, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], [a * h, a * h, 0, length, length])


def _octahedron_planes(r):
    ns = [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    return ns, [r + sy * r for _, sy, _ in ns]  # |x| + |y - r| + |z| <= r


def _dims(cls: str, s: float) -> dict:
    """Shape parameters of a class at scale s (metres)."""
    return {
        "sphere": {"r": 0.5 * s}, "hemisphere": {"r": 0.6 * s}, "ellipsoid": {"a": 0.35 * s, "b": 0.6 * s},
        "cube": {"e": 0.5 * s}, "brick": {"ex": 0.8 * s, "ey": 0.25 * s, "ez": 0.4 * s},
        "cylinder": {"r": 0.35 * s, "h": 1.1 * s}, "cone": {"r": 0.45 * s, "h": 1.1 * s},
        "pyramid": {"a": 0.5 * s, "h": 0.9 * s}, "prism": {"a": 0.45 * s, "h": 0.8 * s, "l": 0.6 * s},
        "octahedron": {"r": 0.55 * s}, "capsule": {"r": 0.25 * s, "h": 1.1 * s},
        "torus": {"R": 0.4 * s, "r": 0.15 * s},
    }[cls]


def _bounding_cylinder(cls: str, s: float) -> tuple[float, float]:
    """(radius, height) of a vertical cylinder on the floor that contains the shape (for screen-space culling)."""
    g = _dims(cls, s)
    if cls in ("sphere", "octahedron"):
        return g["r"], 2 * g["r"]
    if cls == "hemisphere":
        return g["r"], g["r"]
    if cls == "ellipsoid":
        return g["a"], 2 * g["b"]
    if cls == "cube":
        return math.sqrt(2) * g["e"], 2 * g["e"]
    if cls == "brick":
        return math.hypot(g["ex"], g["ez"]), 2 * g["ey"]
    if cls in ("cylinder", "cone", "capsule"):
        return g["r"], g["h"]
    if cls == "pyramid":
        return math.sqrt(2) * g["a"], g["h"]
    if cls == "prism":
        return math.hypot(g["a"], g["l"]), g["h"]
    if cls == "torus":
        return g["R"] + g["r"], 2 * g["r"]
    raise KeyError(f"unknown shape class {cls!r}; known: {CLASSES}")


def _torus(o, d, R, r):
    """Sphere tracing of the flat torus (centre (0, r, 0)) from its bounding cylinder; returns (t, normal)."""
    t_box_in, t_box_out = _bounds_interval(o, d, R + r, 2 * r)
    t = np.where(t_box_in < t_box_out, t_box_in, _INF)
    speed = np.linalg.norm(d, axis=1)
    active = np.flatnonzero(np.isfinite(t))
    for _ in range(96):
        if active.size == 0:
            break
        p = o + t[active, None] * d[active]
        q0 = np.hypot(p[:, 0], p[:, 2]) - R
        dist = np.hypot(q0, p[:, 1] - r) - r
        t[active] += dist / speed[active]
        keep = (dist > 1e-6) & (t[active] < t_box_out[active])
        t[active[t[active] >= t_box_out[active]]] = _INF
        active = active[keep]
    t[active] = _INF  # not converged: a grazing miss
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    rho = np.maximum(np.hypot(p[:, 0], p[:, 2]), 1e-9)
    q0 = rho - R
    n = np.stack([p[:, 0] / rho * q0, p[:, 1] - r, p[:, 2] / rho * q0], axis=1)
    return t, n


def _bounds_interval(o, d, radius, height):
    """Interval of the ray inside the vertical bounding cylinder (radius, 0 <= y <= height)."""
    cyl = _vcylinder(o, d, radius)
    slab = _halfspaces(o, d, *_slab(0, height))
    return np.maximum(np.maximum(cyl[0], slab[0]), 0), np.minimum(cyl[1], slab[1])


def _shape_hit(cls: str, s: float, o: np.ndarray, d: np.ndarray):
    """Nearest positive hit (t, unnormalised local normal) of rays o + t d with a shape; t = inf on a miss."""
    g = _dims(cls, s)
    if cls == "sphere":
        return _intersect(_sphere(o, d, np.array([0, g["r"], 0]), g["r"]))
    if cls == "ellipsoid":
        return _intersect(_sphere(o, d, np.array([0, g["b"], 0]), [g["a"], g["b"], g["a"]]))
    if cls == "hemisphere":
        return _intersect(_sphere(o, d, np.zeros(3), g["r"]), _halfspaces(o, d, [[0, -1, 0]], [0]))
    if cls == "cube":
        return _intersect(_halfspaces(o, d, *_box_planes(g["e"], g["e"], g["e"])))
    if cls == "brick":
        return _intersect(_halfspaces(o, d, *_box_planes(g["ex"], g["ey"], g["ez"])))
    if cls == "cylinder":
        return _intersect(_vcylinder(o, d, g["r"]), _halfspaces(o, d, *_slab(0, g["h"])))
    if cls == "cone":
        return _intersect(_vcone(o, d, g["r"], g["h"]), _halfspaces(o, d, *_slab(0, g["h"])))
    if cls == "pyramid":
        return _intersect(_halfspaces(o, d, *_pyramid_planes(g["a"], g["h"])))
    if cls == "prism":
        return _intersect(_halfspaces(o, d, *_prism_planes(g["a"], g["h"], g["l"])))
    if cls == "octahedron":
        return _intersect(_halfspaces(o, d, *_octahedron_planes(g["r"])))
    if cls == "capsule":
        r, h = g["r"], g["h"]
        return _union(
            _intersect(_vcylinder(o, d, r), _halfspaces(o, d, *_slab(r, h - r))),
            _intersect(_sphere(o, d, np.array([0, r, 0]), r)),
            _intersect(_sphere(o, d, np.array([0, h - r, 0]), r)),
        )
    if cls == "torus":
        return _torus(o, d, g["R"], g["r"])
    raise KeyError(f"unknown shape class {cls!r}; known: {CLASSES}")


def _shape_sdf(cls: str, s: float, p: np.ndarray) -> np.ndarray:
    """Signed distance (or a bound of it that is exactly 0 on the surface) of local points p (N, 3) to a shape."""
    g = _dims(cls, s)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    rho = np.hypot(x, z)

    if cls == "sphere":
        return np.linalg.norm(p - [0, g["r"], 0], axis=1) - g["r"]
    if cls == "ellipsoid":
        a, b = g["a"], g["b"]
        return (np.sqrt((x / a) ** 2 + ((y - b) / b) ** 2 + (z / a) ** 2) - 1) * a
    if cls == "hemisphere":
        return np.maximum(np.linalg.norm(p, axis=1) - g["r"], -y)
    if cls == "cylinder":
        return np.maximum(rho - g["r"], np.abs(y - g["h"] / 2) - g["h"] / 2)
    if cls == "cone":
        k = g["r"] / g["h"]
        return np.maximum((rho - k * (g["h"] - y)) / math.hypot(1, k), -y)
    if cls == "capsule":
        r, h = g["r"], g["h"]
        yc = np.clip(y, r, h - r)
        return np.hypot(rho, y - yc) - r
    if cls == "torus":
        return np.hypot(rho - g["R"], y - g["r"]) - g["r"]
    ns, cs = _raw_planes(cls, g)
    ns = np.asarray(ns, float)
    norm = np.linalg.norm(ns, axis=1)
    return np.max((p @ ns.T - np.asarray(cs, float)) / norm, axis=1)


def _raw_planes(cls, g):
    if cls == "cube":
        return _box_planes(g["e"], g["e"], g["e"])
    if cls == "brick":
        return _box_planes(g["ex"], g["ey"], g["ez"])
    if cls == "pyramid":
        return _pyramid_planes(g["a"], g["h"])
    if cls == "prism":
        return _prism_planes(g["a"], g["h"], g["l"])
    if cls == "octahedron":
        return _octahedron_planes(g["r"])
    raise KeyError(cls)


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Local -> world rotation about +Y."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def signed_distance(obj: dict, points: np.ndarray) -> np.ndarray:
    """Signed distance (0 on the surface) of world points (N, 3) to a scene object (a ``render_scene`` 'objects' entry).

    Written independently of the ray intersection code, so tests can check rendered depths against it.
    """
    base = np.array([obj["position"][0], 0.0, obj["position"][1]])
    local = (np.asarray(points, float) - base) @ _yaw_matrix(obj["yaw"])
    return _shape_sdf(obj["class"], obj["size"], local)


# --- rendering ------------------------------------------------------------------------------------------------
def _pixel_rays(scene: Scene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Camera-frame ray directions with z = 1 through pixel centres, so a ray parameter t is the depth."""
    c = scene.size / 2
    u = (cols + 0.5 - c) / scene.focal
    v = (rows + 0.5 - c) / scene.focal
    u, v = np.broadcast_arrays(u, v)
    return np.stack([u, v, np.ones_like(u)], axis=-1)


def _room(scene: Scene, d_world: np.ndarray):
    """Depth, camera-frame normal and semseg id of the room (floor, back wall, side walls) for world rays (N, 3)."""
    cx, cy, cz = scene.center
    dx, dy, dz = d_world[:, 0], d_world[:, 1], d_world[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.stack([
            np.where(dy < 0, -cy / dy, _INF),  # floor y = 0
            np.where(dz < 0, (-scene.back - cz) / dz, _INF),  # back wall z = -back
            np.where(dx < 0, (-scene.side - cx) / dx, _INF),  # left wall x = -side
            np.where(dx > 0, (scene.side - cx) / dx, _INF),  # right wall x = side
        ], 1)
    k = np.argmin(t, axis=1)
    plane_normals = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0], [-1, 0, 0]], float) @ scene.rotation.T
    labels = np.array([FLOOR_ID, WALL_ID, WALL_ID, WALL_ID], np.uint8)
    return np.take_along_axis(t, k[:, None], 1)[:, 0], plane_normals[k], labels[k]


def _frame_rays_world(scene: Scene) -> np.ndarray:
    """World directions of every pixel's ray (z_cam = 1), built separably: u varies by column, v by row."""
    c = scene.size / 2
    uv = (np.arange(scene.size) + 0.5 - c) / scene.focal
    R = scene.rotation
    d = uv[None, :, None] * R[0] + uv[:, None, None] * R[1] + R[2]
    return d.reshape(-1, 3)


def _rotate(v: np.ndarray, M: np.ndarray) -> np.ndarray:
    """v @ M.T for many 3-vectors, written out: tiny matrices through BLAS spawn threads that fight on a busy machine."""
    return v[:, :1] * M[:, 0] + v[:, 1:2] * M[:, 1] + v[:, 2:3] * M[:, 2]


def _object_rect(scene: Scene, obj: SceneObject) -> tuple[int, int, int, int]:
    """Conservative pixel rectangle (r0, r1, c0, c1) covering the object's bounding cylinder."""
    radius, height = _bounding_cylinder(obj.cls, obj.size)
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    # a 16-gon circumscribing the circle (radius / cos(pi / 16)) at the bottom and top of the bounding cylinder
    rr = radius / math.cos(math.pi / 16)
    ring = np.stack([obj.position[0] + rr * np.cos(ang), np.zeros_like(ang), obj.position[1] + rr * np.sin(ang)], 1)
    pts = np.concatenate([ring, ring + [0, height, 0]])
    cam = (pts - scene.center) @ scene.rotation.T
    if np.any(cam[:, 2] < 0.05):
        return 0, scene.size, 0, scene.size
    uv = cam[:, :2] / cam[:, 2:] * scene.focal + scene.size / 2
    c0, r0 = np.floor(uv.min(0)).astype(int) - 1
    c1, r1 = np.ceil(uv.max(0)).astype(int) + 1
    clip = lambda a: int(min(max(a, 0), scene.size))  # noqa: E731
    return clip(r0), clip(r1), clip(c0), clip(c1)


def _trace(scene: Scene, rows: np.ndarray, cols: np.ndarray, cull: bool = True):
    """Nearest surface of every pixel (rows, cols: equal-shape int grids) -> depth, camera normal, semseg, object index.

    With ``cull`` an object is only intersected with the pixels of its screen rectangle (the fast path); the result
    is the same either way since the rectangle is conservative.
    """
    shape = rows.shape
    full_frame = shape == (scene.size, scene.size)  # rows/cols is the whole image in raster order
    R = scene.rotation
    if full_frame:
        d_world = _frame_rays_world(scene)
    else:
        d_world = _rotate(_pixel_rays(scene, rows, cols).reshape(-1, 3), R.T)
    depth, normal, label = _room(scene, d_world)
    obj_index = np.full(len(depth), -1, np.int32)
    flat_rows, flat_cols = rows.reshape(-1), cols.reshape(-1)
    for i, obj in enumerate(scene.objects):
        if cull and full_frame:
            r0, r1, c0, c1 = _object_rect(scene, obj)
            sel = (np.arange(r0, r1)[:, None] * scene.size + np.arange(c0, c1)).reshape(-1)
        elif cull:
            r0, r1, c0, c1 = _object_rect(scene, obj)
            sel = np.flatnonzero((flat_rows >= r0) & (flat_rows < r1) & (flat_cols >= c0) & (flat_cols < c1))
        else:
            sel = np.arange(len(depth))
        if sel.size == 0:
            continue
        rot = _yaw_matrix(obj.yaw)
        base = np.array([obj.position[0], 0.0, obj.position[1]])
        o_local = (scene.center - base) @ rot
        t, n_local = _shape_hit(obj.cls, obj.size, o_local, _rotate(d_world[sel], rot.T))
        closer = t < depth[sel]
        idx = sel[closer]
        depth[idx] = t[closer]
        n_cam = _rotate(n_local[closer], R @ rot)
        normal[idx] = n_cam / np.linalg.norm(n_cam, axis=1, keepdims=True)
        label[idx] = SEMSEG_CLASSES.index(obj.cls)
        obj_index[idx] = i
    return (depth.reshape(shape), normal.reshape(*shape, 3), label.reshape(shape), obj_index.reshape(shape), d_world)


def _hash_noise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic value noise in [0, 1) from two float coordinates."""
    v = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return v - np.floor(v)


def _floor_albedo(kind: str, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    if kind == "wooden":
        plank = np.floor(x / 0.22)
        tone = 0.75 + 0.25 * _hash_noise(plank, plank * 0.37)
        grain = 0.9 + 0.1 * np.sin(z * 9.0 + plank * 3.1 + 2.0 * np.sin(z * 1.7 + plank))
        base = np.array([0.42, 0.22, 0.09])
        return base * (tone * grain)[:, None]
    if kind == "tiled":
        check = (np.floor(x / 0.6) + np.floor(z / 0.6)) % 2
        return np.where(check[:, None] > 0, [0.75, 0.75, 0.72], [0.32, 0.33, 0.36])
    if kind == "carpeted":
        noise = _hash_noise(np.floor(x * 60), np.floor(z * 60))
        return np.array([0.45, 0.12, 0.14]) * (0.85 + 0.15 * noise)[:, None]
    cell = _hash_noise(np.floor(x / 0.9 + 0.5 * np.floor(z / 0.45)), np.floor(z / 0.45))
    return np.array([0.40, 0.40, 0.38]) * (0.8 + 0.3 * cell)[:, None]


def _shade(scene: Scene, depth, normal_cam, label, obj_index, d_world) -> np.ndarray:
    """Lambertian shading with a distance falloff, display gamma 2 (sqrt), uint8."""
    flat_label, flat_obj, flat_depth = label.reshape(-1), obj_index.reshape(-1), depth.reshape(-1)
    palette = np.array([WALLS[scene.wall], (0, 0, 0)] + [COLORS[o.color] for o in scene.objects], np.float32)
    albedo = palette[np.where(flat_obj >= 0, flat_obj + 2, 0)]
    floor = np.flatnonzero(flat_label == FLOOR_ID)
    p = scene.center + flat_depth[floor, None] * d_world[floor]
    albedo[floor] = _floor_albedo(scene.floor, p[:, 0], p[:, 2])
    light = scene.rotation @ scene.light
    n = normal_cam.reshape(-1, 3)
    lambert = np.maximum(n[:, 0] * light[0] + n[:, 1] * light[1] + n[:, 2] * light[2], 0).astype(np.float32)
    # a room light: the far wall is a little darker than the foreground
    falloff = 1.0 / (1.0 + 0.02 * flat_depth.astype(np.float32) ** 2)
    radiance = albedo * (0.25 + 0.9 * lambert * falloff)[:, None]
    srgb = np.sqrt(np.clip(radiance, 0, 1)) * 255 + 0.5
    return srgb.astype(np.uint8).reshape(*depth.shape, 3)


def _boxes_and_instances(scene: Scene, obj_index: np.ndarray):
    """Instance ids 1..n for visible objects (in scene order) and their tight boxes."""
    instance = np.zeros(obj_index.shape, np.int32)
    boxes, visible = [], []
    for i, obj in enumerate(scene.objects):
        mask = obj_index == i
        if not mask.any():
            continue  # fully occluded or out of view: absent from every modality
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        instance[mask] = len(boxes) + 1
        boxes.append([int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, obj.cls])
        visible.append((i, int(mask.sum())))
    return instance, boxes, visible


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe(obj: SceneObject) -> str:
    return _article(" ".join(w for w in (obj.size_word, obj.color, obj.cls) if w))


def make_caption(scene: Scene, visible: list[tuple[int, int]], obj_index: np.ndarray, depth: np.ndarray, rng) -> str:
    """A caption naming every visible object, one spatial relation between the two largest, the floor and walls."""
    by_area = sorted(visible, key=lambda v: -v[1])
    objs = [scene.objects[i] for i, _ in by_area]
    cols = np.arange(obj_index.shape[1])
    centre, near = {}, {}
    for i, _ in by_area:
        mask = obj_index == i
        centre[i] = float((mask.sum(0) * cols).sum() / mask.sum())
        near[i] = float(np.median(depth[mask]))
    text = _describe(objs[0])
    if len(objs) > 1:
        a, b = by_area[0][0], by_area[1][0]
        if abs(near[a] - near[b]) > 1.5:
            rel = "in front of" if near[a] < near[b] else "behind"
        else:
            rel = "left of" if centre[a] < centre[b] else "right of"
        text += f" {rel} {_describe(objs[1])}"
    rest = [_describe(o) for o in objs[2:]]
    if rest:
        joiner = ["next to", "together with", "near"][rng.integers(3)]
        text += f", {joiner} " + (", ".join(rest[:-1]) + " and " + rest[-1] if len(rest) > 1 else rest[0])
    text += f" on {_article(scene.floor)} floor"
    if rng.random() < 0.5:
        text += f" in a room with {scene.wall} walls"
    return text


def render_scene(seed: int, index: int, size: int = 224) -> dict:
    """Render scene (seed, index) at size x size pixels.

    Returns rgb (uint8 HxWx3), depth (float32 metres), normal (float32 HxWx3 unit, camera frame), semseg (uint8),
    instance (int32), boxes ([x0, y0, x1, y1, class]), caption (str), scene_class (class of the largest visible
    object), plus camera (K, R world->camera, C) and objects (visible objects, instance order) for checks.
    """
    scene = sample_scene(seed, index, size)
    rows, cols = np.mgrid[0:size, 0:size]
    depth, normal, semseg, obj_index, d_world = _trace(scene, rows, cols)
    rgb = _shade(scene, depth, normal, semseg, obj_index, d_world)
    instance, boxes, visible = _boxes_and_instances(scene, obj_index)
    if not visible:  # cannot happen with the placement above, but a scene without objects would break consumers
        raise RuntimeError(f"world scene (seed={seed}, index={index}) has no visible object")
    caption_rng = np.random.default_rng([int(seed), int(index), 1])
    caption = make_caption(scene, visible, obj_index, depth, caption_rng)
    largest = max(visible, key=lambda v: v[1])[0]
    return {
        "rgb": rgb,
        "depth": depth.astype(np.float32),
        "normal": normal.astype(np.float32),
        "semseg": semseg,
        "instance": instance,
        "boxes": boxes,
        "caption": caption,
        "scene_class": scene.objects[largest].cls,
        "camera": scene.camera(),
        "objects": [scene.objects[i].to_dict() for i, _ in visible],
    }


def render_scene_per_pixel(seed: int, index: int, size: int = 224, pixels: int | None = None) -> dict:
    """The naive baseline: the same tracer called one pixel at a time (optionally only the first `pixels` pixels)."""
    scene = sample_scene(seed, index, size)
    n = size * size if pixels is None else min(pixels, size * size)
    depth = np.zeros(n, np.float32)
    semseg = np.zeros(n, np.uint8)
    for k in range(n):
        r, c = divmod(k, size)
        d, _, lab, _, _ = _trace(scene, np.array([[r]]), np.array([[c]]), cull=False)
        depth[k], semseg[k] = d[0, 0], lab[0, 0]
    return {"depth": depth, "semseg": semseg}


# --- writing the 4M layout ------------------------------------------------------------------------------------------
def split_seed(seed: int, split: str) -> int:
    """Scene seed of a split: train uses `seed`; other splits get their own scenes derived from (seed, split)."""
    if split == "train":
        return int(seed)
    return int(hashlib.sha256(f"{seed}/{split}".encode()).hexdigest()[:8], 16)


def stem_of(index: int) -> str:
    return f"{index:06d}"


def _values(scene: dict) -> dict:
    return {"rgb": scene["rgb"], "depth": scene["depth"], "normal": scene["normal"], "semseg": scene["semseg"],
            "instance": scene["instance"], "det": scene["boxes"], "caption": scene["caption"]}


def _write_one(args) -> str:
    split_root, seed, index, size = args
    stem = stem_of(index)
    missing = [m for m in WORLD_MODALITIES if not FOURM_MODALITIES[m].path(split_root, stem).exists()]
    if not missing:
        return "skipped"
    values = _values(render_scene(seed, index, size))
    for m in missing:
        FOURM_MODALITIES[m].write(FOURM_MODALITIES[m].path(split_root, stem), values[m])
    return "written"


def _check_meta(split_root: Path, meta: dict) -> None:
    path = split_root / "world.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{path} was written with different settings {diff} (old, new); refusing to mix scenes in one folder. "
                "Use another --out, or the same --seed/--size"
            )
    else:
        atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())


def generate(out: str, num: int, size: int = 224, seed: int = 0, split: str = "train", workers: int = 1) -> Path:
    """Render scenes 0..num-1 of (seed, split) into ``<out>/<split>/<modality>/<stem>.<ext>``; returns the split folder.

    Existing files are kept (the run is resumable and can be extended with a larger ``num``); every file is written
    atomically. ``<out>/<split>/world.json`` records the settings and refuses a different seed or size later.
    """
    split_root = Path(out) / split
    split_root.mkdir(parents=True, exist_ok=True)
    scene_seed = split_seed(seed, split)
    meta = {"seed": int(seed), "split": split, "scene_seed": scene_seed, "size": int(size), "classes": CLASSES,
            "semseg_classes": SEMSEG_CLASSES, "modalities": {m: FOURM_MODALITIES[m].ext for m in WORLD_MODALITIES},
            "camera_frame": "x right, y down, z forward; depth = z in metres",
            "boxes": "[x0, y0, x1, y1, class] pixel edges; det[i] is instance i + 1"}
    _check_meta(split_root, meta)
    jobs = [(split_root, scene_seed, i, size) for i in range(num)]
    bar = tqdm(total=num, desc=f"world {split}", unit="img")
    if workers <= 1:
        for job in jobs:
            _write_one(job)
            bar.update()
    else:
        with futures.ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=4):
                bar.update()
    bar.close()
    return split_root


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fourm-bench world", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder; scenes go to <out>/<split>/<modality>/")
    p.add_argument("--num", type=int, required=True, help="number of scenes")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--layouts", default="", help="also write these views under <out>/layouts: in1k,coco,ade20k,nyuv2")
    args = parse_cli(p, argv)
    if args.num < 1 or args.size < 16:
        p.error("--num must be >= 1 and --size >= 16")
    try:
        split_root = generate(args.out, args.num, args.size, args.seed, args.split, args.workers)
    except ValueError as e:  # a settings clash with an existing folder: one line, no traceback
        print(f"fourm-bench world: {e}", file=sys.stderr)
        return 2
    print(f"world: {args.num} scenes in {split_root}")
    if args.layouts:
        from fourm.data.layouts import LAYOUTS, write_layouts

        which = tuple(w.strip() for w in args.layouts.split(",") if w.strip())
        unknown = sorted(set(which) - set(LAYOUTS))
        if unknown:
            p.error(f"--layouts: unknown {unknown}; choose from {list(LAYOUTS)}")
        out = write_layouts(args.out, Path(args.out) / "layouts", which=which, splits=(args.split,))
        print(f"layouts {','.join(which)} in {out}")
    return 0
