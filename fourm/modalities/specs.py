"""One :class:`ModalitySpec` per modality of the 4M folder layout: everything a layer needs to know about it.

A spec ties the folder name a dataset uses (``depth``) to the token modality a model sees (``tok_depth@224``,
registered in :mod:`fourm.modalities`), and says how a file of it is stored (:mod:`fourm.modalities.codecs`), how a
decoded file becomes a tensor and is cropped, resized and flipped with the other modalities of its sample, which
VQ-VAE adapter tokenizes it, which metric measures a reconstruction or a prediction of it
(:mod:`fourm.modalities.metrics`), which official tokenizer input transform it takes, how token shards store it, and
how it is drawn for people. Layers ask the spec; they never compare a modality's name.

Adding a modality is one call::

    from fourm.modalities import ModalitySpec, register_spec, register
    register("tok_albedo@224", "image_tokens", vocab_size=4096)                  # what the model sees
    register_spec(ModalitySpec("albedo", codec="png_rgb", token="tok_albedo@224", value="image",
                               resize="bilinear", clamp=(0.0, 1.0), tokenizer="rgb", metric="rgb", render="rgb"))

Folders whose name starts with a registered family prefix (``feat_``: feature maps a labeler wrote) get a spec made
from the family; any other unknown name is an error naming the registry.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fourm.modalities.codecs import CODECS, Codec, atomic_write_bytes

# What a decoded file is, and so how it becomes a tensor (channel-first, no batch dim):
#   image      uint8 HxWxC -> float [C, H, W] in [0, 1]
#   scalar     float HxW (e.g. metres) -> float [1, H, W]
#   vector     float HxWx3 -> float [3, H, W]
#   ids        integer HxW -> int64 [H, W]
#   binary     {0, >0} HxW -> float [1, H, W] in {0, 1}
#   feature    float [C, h, w] -> float [C, h, w]
#   embedding  float [D] or [L, D] -> float (as stored)
#   boxes, text, json: not tensors (kept as decoded)
VALUES = ("image", "scalar", "vector", "ids", "binary", "feature", "embedding", "boxes", "text", "json")


def _image(a):
    return torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1) / 255.0


def _scalar(a):
    return torch.from_numpy(np.array(a, dtype=np.float32))[None]


def _vector(a):
    return torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1).contiguous()


def _ids(a):
    return torch.from_numpy(np.array(a, dtype=np.int64))


def _binary(a):
    return torch.from_numpy(np.asarray(a) > 0).float()[None]


def _float(a):
    return torch.from_numpy(np.array(a, dtype=np.float32))


TO_TENSOR: dict[str, Callable[[Any], torch.Tensor]] = {
    "image": _image, "scalar": _scalar, "vector": _vector, "ids": _ids, "binary": _binary, "feature": _float,
    "embedding": _float,
}


# --- renderers: a modality tensor (no batch dim) or decoded value -> uint8 HxWx3 --------------------------------
def _render_rgb(x, **_):
    return (x.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _render_depth(x, depth_range: tuple[float, float] = (0.5, 12.0), **_):
    """Depth via the turbo colormap on log-depth (near = red), no depth black; relative depth (standardised, with
    negative values: an official tokenizer's decode) on its own min..max."""
    import matplotlib

    d = x[0].numpy()
    if d.min() < 0:
        t = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
        return (matplotlib.colormaps["turbo"](1 - t)[..., :3] * 255).round().astype(np.uint8)
    lo, hi = np.log(depth_range[0]), np.log(depth_range[1])
    t = (np.log(np.clip(d, *depth_range)) - lo) / (hi - lo)
    a = matplotlib.colormaps["turbo"](1 - t)[..., :3]
    a[d <= 0] = 0
    return (a * 255).round().astype(np.uint8)


def _render_normal(x, **_):
    return (((x.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _render_ids(x, num_classes: int = 256, **_):
    """Class or instance ids with a fixed palette (0 black)."""
    palette = np.random.default_rng(3).integers(40, 256, (max(num_classes, 256), 3))
    palette[0] = 0
    return palette[x.numpy().clip(0, len(palette) - 1)].astype(np.uint8)


def _render_binary(x, **_):
    a = (x[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)


def _render_text(value, **_):
    from fourm.modalities.pictures import text_tile

    return text_tile(str(value))


def _render_boxes(value, rgb: np.ndarray | None = None, **_):
    from fourm.modalities.pictures import draw_boxes

    base = rgb if rgb is not None else np.full((128, 128, 3), 255, np.uint8)
    return draw_boxes(base, value)


RENDERERS: dict[str, Callable[..., np.ndarray]] = {
    "rgb": _render_rgb, "depth": _render_depth, "normal": _render_normal, "ids": _render_ids,
    "binary": _render_binary, "text": _render_text, "boxes": _render_boxes,
}


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """What a modality is, for every layer. Only ``name`` and ``codec`` are required.

    name          folder of the 4M layout (``<split>/<name>/<stem><ext>``)
    codec         storage form, a key of :data:`fourm.modalities.codecs.CODECS`
    token         the token modality models see (a name registered in :mod:`fourm.modalities`), if any
    value         what a decoded file is (:data:`VALUES`)
    resize        ``bilinear`` (antialiased) or ``nearest`` (nearest-exact: no value is invented between two
                  labels, depths or normals); None for values that are not maps
    clamp         value range kept after a bilinear resize (RGB: (0, 1))
    flip_negates  channel negated by a horizontal flip (normals: 0, the camera frame's x)
    tokenizer     the VQ-VAE adapter that tokenizes it (:data:`fourm.tokenizers.vqvae.ADAPTERS`)
    metric        the metric kind of :data:`fourm.modalities.metrics.METRICS`
    official_input  the official tokenizer input transform it takes (``rgb``, ``depth``, ``normal``, ``semseg``, ...)
    render        how a tensor or decoded value is drawn (a key of :data:`RENDERERS`)
    shard_member  sequence modalities: the member of a token shard that holds it, and how many values a sample
                  has there: one (``whole``), one per crop (``crops``), or variants pretraining picks from
                  (``variants``)
    task          what out-of-the-box evaluation measures of it (``depth``, ``normal``, ``semseg``, ``boxes``, ``text``)
    """

    name: str
    codec: str
    token: str | None = None
    value: str = "feature"
    resize: str | None = None
    clamp: tuple[float, float] | None = None
    flip_negates: int | None = None
    tokenizer: str | None = None
    metric: str | None = None
    official_input: str | None = None
    render: str | None = None
    shard_member: tuple[str, str] | None = None
    task: str | None = None
    summary: str = ""

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"modality spec {self.name!r}: unknown codec {self.codec!r}; codecs: {sorted(CODECS)}")
        if self.value not in VALUES:
            raise ValueError(f"modality spec {self.name!r}: value must be one of {VALUES}, got {self.value!r}")
        if self.resize not in (None, "bilinear", "nearest"):
            raise ValueError(f"modality spec {self.name!r}: resize must be 'bilinear', 'nearest' or None")
        if self.render is not None and self.render not in RENDERERS:
            raise ValueError(f"modality spec {self.name!r}: unknown renderer {self.render!r}; renderers: {sorted(RENDERERS)}")
        if self.shard_member is not None and self.shard_member[1] not in ("whole", "crops", "variants"):
            raise ValueError(f"modality spec {self.name!r}: shard_member[1] must be 'whole', 'crops' or 'variants'")

    # --- files ---------------------------------------------------------------------------------------------
    @property
    def file(self) -> Codec:
        return CODECS[self.codec]

    @property
    def ext(self) -> str:
        return self.file.ext

    def path(self, split_root: str | os.PathLike, stem: str) -> Path:
        return Path(split_root) / self.name / f"{stem}{self.ext}"

    def encode(self, value: Any) -> bytes:
        return self.file.encode(value)

    def decode(self, path: str | os.PathLike) -> Any:
        return self.file.decode(Path(path))

    def write(self, path: str | os.PathLike, value: Any) -> None:
        atomic_write_bytes(path, self.encode(value))

    def read(self, split_root: str | os.PathLike, stem: str) -> Any:
        return self.decode(self.path(split_root, stem))

    # --- tensors -------------------------------------------------------------------------------------------
    @property
    def is_map(self) -> bool:
        """A spatial map that is cropped, resized and flipped with its sample's image."""
        return self.resize is not None

    def to_tensor(self, value: Any):
        """Decoded file -> modality tensor (boxes, text and JSON values are returned as they are)."""
        conv = TO_TENSOR.get(self.value)
        return value if conv is None else conv(value)

    def resize_to(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A map ``[..., C, H, W]`` (or an id map ``[H, W]``) resized to ``size`` by this modality's rule."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if self.resize is None:
            raise ValueError(f"modality {self.name!r} is not a map; it cannot be resized")
        squeeze = x.dim() == 2
        y = x[None, None] if squeeze else x[None]
        if self.resize == "nearest":
            y = F.interpolate(y.float(), size=size, mode="nearest-exact").to(x.dtype)
        else:
            y = F.interpolate(y.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            if self.clamp is not None:
                y = y.clamp(*self.clamp)
        return y[0, 0] if squeeze else y[0]

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        """Horizontal flip of a map (any leading dims); vectors negate their ``flip_negates`` channel."""
        x = x.flip(-1)
        if self.flip_negates is not None:
            x = x.clone()
            x[..., self.flip_negates, :, :] = -x[..., self.flip_negates, :, :]
        return x

    def crop_resize_flip(self, x: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
        """Crop ``box = (top, left, height, width)`` of a modality tensor, resize to ``size`` x ``size``, maybe flip."""
        top, left, h, w = box
        x = self.resize_to(x[..., top : top + h, left : left + w], (size, size))
        return self.hflip(x) if flip else x

    def picture(self, value, **kw) -> np.ndarray:
        """A tensor (no batch dim) or decoded value as a uint8 HxWx3 picture for people."""
        if self.render is None:
            raise KeyError(f"modality {self.name!r} has no renderer; set ModalitySpec.render (one of {sorted(RENDERERS)})")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
        return RENDERERS[self.render](value, **kw)


_SPECS: dict[str, ModalitySpec] = {}
_BY_TOKEN: dict[str, str] = {}
_FAMILIES: dict[str, Callable[[str], ModalitySpec]] = {}


def register_spec(spec: ModalitySpec, *, overwrite: bool = False) -> ModalitySpec:
    """Register a modality spec under its folder name (and its token modality's name)."""
    if spec.name in _SPECS and not overwrite:
        raise ValueError(f"modality spec {spec.name!r} is already registered (pass overwrite=True to replace it)")
    _SPECS[spec.name] = spec
    if spec.token is not None and spec.token not in _BY_TOKEN:
        _BY_TOKEN[spec.token] = spec.name
    return spec


def register_family(prefix: str, make: Callable[[str], ModalitySpec]) -> None:
    """Folders named ``<prefix>...`` get the spec ``make(name)`` (e.g. ``feat_`` feature maps a labeler writes)."""
    _FAMILIES[prefix] = make


def unregister_spec(name: str) -> None:
    spec_ = _SPECS.pop(name, None)
    if spec_ is not None and _BY_TOKEN.get(spec_.token) == name:
        del _BY_TOKEN[spec_.token]


def spec(name: str) -> ModalitySpec:
    """The spec of a folder name (``depth``) or of a token modality (``tok_depth@224``); unknown names raise."""
    if name in _SPECS:
        return _SPECS[name]
    if name in _BY_TOKEN:
        return _SPECS[_BY_TOKEN[name]]
    for prefix, make in _FAMILIES.items():
        if name.startswith(prefix):
            return register_spec(make(name))
    raise KeyError(
        f"unknown modality {name!r}; specs are registered for {sorted(_SPECS)} (and folders starting with "
        f"{sorted(_FAMILIES)}). Register it with fourm.modalities.register_spec(ModalitySpec(...))"
    )


def has_spec(name: str) -> bool:
    try:
        spec(name)
        return True
    except KeyError:
        return False


def specs() -> dict[str, ModalitySpec]:
    """Every registered spec by folder name."""
    return dict(_SPECS)


def folder_of(token_modality: str) -> str:
    """The folder a token modality is made from (``tok_depth@224`` -> ``depth``); a modality whose spec has no other
    folder is its own."""
    return spec(token_modality).name if has_spec(token_modality) else token_modality


def sequence_members() -> dict[str, tuple[str, str]]:
    """Token-shard members of the sequence modalities: folder name -> (member, whole | crops | variants)."""
    return {s.name: s.shard_member for s in _SPECS.values() if s.shard_member is not None}


def feature_map(name: str, token: str | None = None, summary: str = "") -> ModalitySpec:
    """The spec of a folder of feature maps (``.npy`` [C, h, w], resized bilinearly)."""
    return ModalitySpec(name, "npy", token=token, value="feature", resize="bilinear", tokenizer="feature",
                        metric="feature", official_input="feature_map", summary=summary or "feature map [C, h, w]")


# --- the built-in modalities: 4M-7, the world's extras, and 4M-21 -------------------------------------------
for _s in [
    ModalitySpec("rgb", "png_rgb", token="tok_rgb@224", value="image", resize="bilinear", clamp=(0.0, 1.0),
                 tokenizer="rgb", metric="rgb", official_input="rgb", render="rgb", summary="uint8 HxWx3"),
    ModalitySpec("depth", "png_depth", token="tok_depth@224", value="scalar", resize="nearest", tokenizer="depth",
                 metric="depth", official_input="depth", render="depth", task="depth",
                 summary="uint16 millimetres (0 = no depth)"),
    ModalitySpec("normal", "png_normal", token="tok_normal@224", value="vector", resize="nearest", flip_negates=0,
                 tokenizer="normal", metric="normal", official_input="normal", render="normal", task="normal",
                 summary="uint8 HxWx3, (n + 1) / 2 * 255, camera frame (x right, y down, z forward)"),
    ModalitySpec("semseg", "png_u8", token="tok_semseg@224", value="ids", resize="nearest", tokenizer="semseg",
                 metric="semseg", official_input="semseg", render="ids", task="semseg", summary="uint8 class ids"),
    ModalitySpec("instance", "png_u16", value="ids", resize="nearest", render="ids",
                 summary="uint16 instance ids, 0 = none; instance i <-> det[i - 1]"),
    ModalitySpec("det", "boxes", token="det", value="boxes", render="boxes", shard_member=("det.json", "crops"),
                 task="boxes", summary="[[x0, y0, x1, y1, class_name], ...] pixel edges"),
    ModalitySpec("caption", "text", token="caption", value="text", render="text",
                 shard_member=("caption.txt", "whole"), task="text", summary="one caption"),
    ModalitySpec("canny_edge", "png_u8", token="tok_canny_edge@224", value="binary", resize="nearest",
                 tokenizer="edge", metric="edge", official_input="edge", render="binary", summary="uint8 {0, 255}"),
    ModalitySpec("sam_edge", "png_u8", token="tok_sam_edge@224", value="binary", resize="nearest",
                 tokenizer="edge", metric="edge", official_input="edge", render="binary", summary="uint8 {0, 255}"),
    ModalitySpec("sam_instance", "png_u16", token="sam_instance", value="ids", resize="nearest", render="ids",
                 shard_member=("sam_instance.json", "crops"), summary="uint16 SAM instance ids"),
    ModalitySpec("sam_mask", "png_u8", value="binary", resize="nearest", tokenizer="mask", metric="mask",
                 official_input="sam_mask", render="binary", summary="one instance's mask in its box (the mask tokenizer's input)"),
    ModalitySpec("color_palette", "json", token="color_palette", value="json",
                 shard_member=("color_palette.json", "variants"), summary="palettes of 1..7 colours"),
    ModalitySpec("metadata", "json", token="metadata", value="json", shard_member=("metadata.json", "whole"),
                 summary="the 4M-21 metadata values"),
    feature_map("clip", "tok_clip@224", "CLIP-B/16 patch features [C, 14, 14]"),
    feature_map("dinov2", "tok_dinov2@224", "DINOv2-B/14 patch features [C, 16, 16]"),
    feature_map("imagebind", "tok_imagebind@224", "ImageBind-H/14 patch features [C, 16, 16]"),
    ModalitySpec("dinov2_global", "npy", token="tok_dinov2_global", value="embedding", official_input="global",
                 summary="DINOv2 global embedding [D]"),
    ModalitySpec("imagebind_global", "npy", token="tok_imagebind_global", value="embedding", official_input="global",
                 summary="ImageBind global embedding [D]"),
    ModalitySpec("t5_caption", "npy", token="t5_caption", value="embedding", summary="T5 embeddings [L, 4096]"),
]:
    register_spec(_s)

register_family("feat_", lambda name: feature_map(name))
