"""Text serializations of the 4M-21 sequence modalities, in the strings the official transforms write.

Every value is a coordinate-bin word ``v<k>=<n>`` of the shared WordPiece vocabulary (the 4M tokenizer has the
words ``v0=0`` .. ``v3=999``), so these modalities share the caption's text tokenizer:

* **color palette** ``v1=<n colours> v0=.. v0=.. v0=..`` (three values per colour: L, a, b of CIELAB, binned by
  :func:`lab_bins`).
* **metadata** a list of chunks ``v1=<type id> v0=<value bin>``, one per metadata type (``METADATA_TYPES``); the
  masking keeps or drops whole chunks.
* **human poses** ``none``, or per person ``human v0..v3 (box)`` followed by the groups ``global`` (9 bins),
  ``shape`` (10), ``camera`` (3) and ``pose`` (8 pose tokens), in any order.
* **SAM instances** per query point ``point v0=<y> v1=<x>``, then ``none`` or one ``polygon v0..v3 (box)`` + 16 mask
  tokens per instance containing the point.

Token ids of a learned tokenizer (pose, instance masks) above 511 are written as ``v1=<id - 512>``: a ``v<k>=<n>``
word holds ``k * 512 + n``. Each serializer parses what it writes (``*_to_text`` / ``*_from_text``).
"""
from __future__ import annotations

import dataclasses
import re

BINS = 1000  # v0=0 .. v0=999
TOKEN_SPLIT = 512  # a tokenizer id i is v{i // 512}={i % 512}
WORD = re.compile(r"^v([0-3])=(\d+)$")

# The metadata types, in the order of their ids: image statistics, what the image holds, and its geometry.
METADATA_TYPES = (
    "original_width", "original_height", "crop_width", "crop_height", "brightness", "contrast", "saturation",
    "colorfulness", "entropy", "clutter_score", "instance_count", "instance_diversity", "semantic_count",
    "semantic_diversity", "objectness", "occlusion", "walkability", "geometric_complexity", "depth_range",
    "depth_mean", "caption_length",
)


class SerializationError(ValueError):
    """A string that is not in the modality's format; names the modality and the offending word."""


def word(value: int, k: int = 0) -> str:
    if not 0 <= value < BINS:
        raise SerializationError(f"v{k}={value}: a bin must lie in 0..{BINS - 1}")
    return f"v{k}={value}"


def parse_word(text: str, what: str) -> tuple[int, int]:
    m = WORD.match(text)
    if not m:
        raise SerializationError(f"{what}: expected a word v<k>=<n>, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def token_word(token: int) -> str:
    """A tokenizer id (< 2048) as one word: ``v{id // 512}={id % 512}``."""
    if not 0 <= token < 4 * TOKEN_SPLIT:
        raise SerializationError(f"token {token}: ids must lie in 0..{4 * TOKEN_SPLIT - 1}")
    return f"v{token // TOKEN_SPLIT}={token % TOKEN_SPLIT}"


def parse_token(text: str, what: str) -> int:
    k, n = parse_word(text, what)
    return k * TOKEN_SPLIT + n


# --- colour palette ---------------------------------------------------------------------------------------------------
def lab_bins(lab) -> list[int]:
    """CIELAB (L in 0..100, a and b in -128..127) -> three bins: L as is, a and b shifted by 128 (0..255)."""
    L, a, b = (float(v) for v in lab)
    return [min(BINS - 1, max(0, round(L))), min(255, max(0, round(a) + 128)), min(255, max(0, round(b) + 128))]


def palette_to_text(colours: list[list[int]]) -> str:
    """``[[L, a, b] bins, ...]`` (see :func:`lab_bins`) -> ``v1=<n> v0=L v0=a v0=b ...``."""
    if not colours:
        raise SerializationError("color_palette: a palette has at least one colour")
    return " ".join([word(len(colours), 1), *[word(int(v)) for c in colours for v in c]])


def palette_from_text(text: str) -> list[list[int]]:
    words = text.split()
    if not words:
        raise SerializationError("color_palette: empty string")
    k, n = parse_word(words[0], "color_palette")
    values = [parse_word(w, "color_palette") for w in words[1:]]
    if k != 1 or any(kk != 0 for kk, _ in values) or len(values) != 3 * n:
        raise SerializationError(f"color_palette: {text!r} is not v1=<n> followed by 3 x n v0= words")
    return [[values[3 * i + j][1] for j in range(3)] for i in range(n)]


# --- metadata ---------------------------------------------------------------------------------------------------------
def metadata_to_chunks(values: dict[str, int]) -> list[str]:
    """``{type name: bin}`` -> chunks ``v1=<type id> v0=<bin>`` in the dict's order (the official transform shuffles
    them before masking)."""
    chunks = []
    for name, value in values.items():
        if name not in METADATA_TYPES:
            raise SerializationError(f"metadata: unknown type {name!r}; known: {', '.join(METADATA_TYPES)}")
        chunks.append(f"{word(METADATA_TYPES.index(name), 1)} {word(int(value))}")
    return chunks


def metadata_from_chunks(chunks: list[str]) -> dict[str, int]:
    out = {}
    for chunk in chunks:
        words = chunk.split()
        if len(words) != 2:
            raise SerializationError(f"metadata: chunk {chunk!r} is not 'v1=<type id> v0=<value>'")
        (k1, type_id), (k0, value) = parse_word(words[0], "metadata"), parse_word(words[1], "metadata")
        if k1 != 1 or k0 != 0 or type_id >= len(METADATA_TYPES):
            raise SerializationError(f"metadata: chunk {chunk!r} is not 'v1=<type id < {len(METADATA_TYPES)}> v0=<value>'")
        out[METADATA_TYPES[type_id]] = value
    return out


# --- human poses ------------------------------------------------------------------------------------------------------
POSE_GROUPS = {"global": 9, "shape": 10, "camera": 3, "pose": 8}


@dataclasses.dataclass
class HumanPose:
    """One person: a box (4 bins, x0 y0 x1 y1), global orientation (9 bins), body shape (10 bins), camera (3 bins)
    and 8 pose tokens (ids of a pose tokenizer); ``order`` is the order of the four groups in the string."""

    box: list[int]
    global_orient: list[int]
    shape: list[int]
    camera: list[int]
    pose: list[int]
    order: tuple[str, ...] = ("global", "shape", "camera", "pose")

    def group(self, name: str) -> list[int]:
        return {"global": self.global_orient, "shape": self.shape, "camera": self.camera, "pose": self.pose}[name]


def poses_to_text(people: list[HumanPose]) -> str:
    if not people:
        return "none"
    words = []
    for p in people:
        if len(p.box) != 4:
            raise SerializationError(f"human_poses: a box has 4 bins, got {p.box}")
        words += ["human", *[word(v, k) for k, v in enumerate(p.box)]]
        for name in p.order:
            values = p.group(name)
            if len(values) != POSE_GROUPS[name]:
                raise SerializationError(f"human_poses: {name} has {POSE_GROUPS[name]} values, got {len(values)}")
            words += [name, *(token_word(v) if name == "pose" else word(v) for v in values)]
    return " ".join(words)


def poses_from_text(text: str) -> list[HumanPose]:
    words = text.split()
    if words == ["none"]:
        return []
    people, i = [], 0
    while i < len(words):
        if words[i] != "human":
            raise SerializationError(f"human_poses: expected 'human' at word {i}, got {words[i]!r}")
        box = [parse_word(w, "human_poses")[1] for w in words[i + 1:i + 5]]
        i += 5
        groups, order = {}, []
        while i < len(words) and words[i] in POSE_GROUPS:
            name, n = words[i], POSE_GROUPS[words[i]]
            chunk = words[i + 1:i + 1 + n]
            if len(chunk) != n:
                raise SerializationError(f"human_poses: {name} needs {n} values")
            groups[name] = [parse_token(w, "human_poses") if name == "pose" else parse_word(w, "human_poses")[1]
                            for w in chunk]
            order.append(name)
            i += 1 + n
        if sorted(order) != sorted(POSE_GROUPS):
            raise SerializationError(f"human_poses: a person needs the groups {sorted(POSE_GROUPS)}, got {order}")
        people.append(HumanPose(box, groups["global"], groups["shape"], groups["camera"], groups["pose"], tuple(order)))
    return people


# --- SAM instances ----------------------------------------------------------------------------------------------------
MASK_TOKENS = 16


@dataclasses.dataclass
class PointInstances:
    """A query point (y, x bins) and the instances containing it: each a box (x0 y0 x1 y1 bins) and 16 mask tokens."""

    point: tuple[int, int]
    instances: list[tuple[list[int], list[int]]]


def sam_to_text(points: list[PointInstances]) -> str:
    words = []
    for p in points:
        words += ["point", word(p.point[0], 0), word(p.point[1], 1)]
        if not p.instances:
            words.append("none")
        for box, tokens in p.instances:
            if len(box) != 4 or len(tokens) != MASK_TOKENS:
                raise SerializationError(f"sam_instance: an instance is a 4-bin box and {MASK_TOKENS} mask tokens")
            words += ["polygon", *[word(v, k) for k, v in enumerate(box)], *[token_word(t) for t in tokens]]
    return " ".join(words)


def sam_from_text(text: str) -> list[PointInstances]:
    words, points, i = text.split(), [], 0
    while i < len(words):
        if words[i] != "point":
            raise SerializationError(f"sam_instance: expected 'point' at word {i}, got {words[i]!r}")
        y, x = parse_word(words[i + 1], "sam_instance")[1], parse_word(words[i + 2], "sam_instance")[1]
        i += 3
        instances = []
        if i < len(words) and words[i] == "none":
            i += 1
        while i < len(words) and words[i] == "polygon":
            box = [parse_word(w, "sam_instance")[1] for w in words[i + 1:i + 5]]
            tokens = [parse_token(w, "sam_instance") for w in words[i + 5:i + 5 + MASK_TOKENS]]
            if len(tokens) != MASK_TOKENS:
                raise SerializationError(f"sam_instance: a polygon needs {MASK_TOKENS} mask tokens")
            instances.append((box, tokens))
            i += 5 + MASK_TOKENS
        points.append(PointInstances((y, x), instances))
    return points
