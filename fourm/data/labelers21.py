"""Pseudo labelers of the 4M-21 modalities, registered with :mod:`fourm.data.labeling` (``fourm-bench label``).

=================  =========================================================================  ======================
labeler            what it writes (per image)                                                  stored as
=================  =========================================================================  ======================
``canny_edge``     Canny edges of the grey image (scikit-image, ``sigma``)                     ``canny_edge/*.png``
``sam_edge``       boundaries of the instance masks                                            ``sam_edge/*.png``
``sam_instance``   the instance masks as an id map (0 = none)                                  ``sam_instance/*.png``
``color_palette``  k-means colour palettes of 1..7 colours in CIELAB (scikit-learn)            ``color_palette/*.json``
``metadata``       the 4M-21 metadata types (:data:`fourm.data.serialize.METADATA_TYPES`)      ``metadata/*.json``
``vit_features``   patch-token maps of a timm ViT (DINOv2/ImageBind/CLIP by model name)         ``<name>/*.npy``
``vit_global``     the pooled embedding of the same ViT (the retrieval modalities)            ``<name>_global/*.npy``
``t5_caption``     T5 embeddings of the caption (a local T5 via ``checkpoint``; else a seeded  ``t5_caption/*.npy``
                   stand-in encoder of the same shape)
=================  =========================================================================  ======================

The instance masks come from a :class:`MaskSource`: the world's ground-truth instances (:class:`WorldInstances`), or
a real SAM through the same interface. The ViT labelers create random (seeded) weights unless ``checkpoint`` names a
local weights file, which is how real DINOv2/ImageBind/CLIP weights are used here. Human poses have no labeler on
the world (it has no people): :class:`HumanPoseSource` is the interface a pose estimator implements, and
:func:`pose_from_params` bins its outputs into the serialized form.
"""
from __future__ import annotations

import abc
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fourm.data.labeler import Labeler, register_labeler
from fourm.data.layouts import FOURM_MODALITIES, folder_modality
from fourm.data.weights import load_strict, read_state_dict
from fourm.modalities import ModalitySpec, has_spec, register_spec
from fourm.modalities.codecs import read_png
from fourm.modalities.specs import feature_map
from fourm.data.serialize import BINS, METADATA_TYPES, HumanPose


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def _grey(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, H, W] luminance."""
    w = torch.tensor(LUMA).view(1, 3, 1, 1)
    return (images.float().cpu() * w).sum(1).numpy()


# --- edges ------------------------------------------------------------------------------------------------------------
class CannyEdges(Labeler):
    name = modality = "canny_edge"

    def __init__(self, sigma: float = 2.0):
        self.sigma = sigma
        self.codec = folder_modality(self.modality)

    def __call__(self, images, stems):
        from skimage.feature import canny

        return [(canny(g, sigma=self.sigma) * 255).astype(np.uint8) for g in _grey(images)]


@register_labeler("canny_edge")
def _canny(in_dir: Path, sigma: float = 2.0, **_) -> Labeler:
    return CannyEdges(sigma)


# --- instance masks: SAM-style instances and their edges ---------------------------------------------------------------
class MaskSource(abc.ABC):
    """Instance masks of an image as an id map (0 = none, i >= 1 = instance i): what SAM's automatic mask generator
    gives, flattened."""

    @abc.abstractmethod
    def masks(self, image: torch.Tensor, stem: str) -> np.ndarray:
        """[H, W] int instance ids for one [3, H, W] image."""


class WorldInstances(MaskSource):
    """The world's ground-truth instance masks (``<split>/instance``), plus the floor and the walls as instances of
    their own, as SAM segments them too."""

    def __init__(self, split: Path):
        self.split = Path(split)

    def masks(self, image, stem):
        path = FOURM_MODALITIES["instance"].path(self.split, stem)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the world's instance masks are needed for {stem!r} "
                                    "(label a split written by `fourm-bench world`, or plug in a SAM MaskSource)")
        inst = read_png(path).astype(np.int64)
        semseg = read_png(FOURM_MODALITIES["semseg"].path(self.split, stem)).astype(np.int64)
        out = inst.copy()
        n = int(inst.max())
        for k, cls in enumerate((1, 2)):  # floor, wall: background classes without instance ids
            out[(inst == 0) & (semseg == cls)] = n + 1 + k
        return _relabel(out)


def _relabel(ids: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..K in order of first appearance (0 stays 0)."""
    values, inverse = np.unique(ids, return_inverse=True)
    keep = values != 0
    new = np.zeros(len(values), np.int64)
    new[keep] = np.arange(1, keep.sum() + 1)
    return new[inverse].reshape(ids.shape)


class SamInstances(Labeler):
    name = modality = "sam_instance"

    def __init__(self, source: MaskSource):
        self.source = source
        self.codec = folder_modality(self.modality)

    def __call__(self, images, stems):
        return [self.source.masks(img, stem) for img, stem in zip(images, stems)]


class SamEdges(SamInstances):
    name = modality = "sam_edge"

    def __init__(self, source: MaskSource):
        super().__init__(source)
        self.codec = folder_modality(self.modality)

    def __call__(self, images, stems):
        from skimage.segmentation import find_boundaries

        return [(find_boundaries(m, mode="inner") * 255).astype(np.uint8) for m in super().__call__(images, stems)]


@register_labeler("sam_instance")
def _sam_instance(in_dir: Path, source: MaskSource | None = None, **_) -> Labeler:
    return SamInstances(source or WorldInstances(in_dir.parent))


@register_labeler("sam_edge")
def _sam_edge(in_dir: Path, source: MaskSource | None = None, **_) -> Labeler:
    return SamEdges(source or WorldInstances(in_dir.parent))


def query_points(ids: np.ndarray, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` random pixel positions (y, x) of an image, seeded: the SAM-instance queries."""
    rng = np.random.default_rng(seed)
    h, w = ids.shape
    return [(int(rng.integers(h)), int(rng.integers(w))) for _ in range(n)]


def instance_box(mask: np.ndarray) -> list[int]:
    """The tight box of a boolean mask as bins x0 y0 x1 y1 over the image (0..999)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return [int(xs.min() * (BINS - 1) / max(w - 1, 1)), int(ys.min() * (BINS - 1) / max(h - 1, 1)),
            int(xs.max() * (BINS - 1) / max(w - 1, 1)), int(ys.max() * (BINS - 1) / max(h - 1, 1))]


# --- colour palette ---------------------------------------------------------------------------------------------------
class ColorPalette(Labeler):
    """Palettes of 1..``max_colours`` colours: k-means cluster centres of the pixels in CIELAB, largest cluster first;
    written as ``{"1": [[L, a, b]], "2": [...], ...}`` (floats; :func:`fourm.data.serialize.lab_bins` bins them)."""

    name = modality = "color_palette"

    def __init__(self, max_colours: int = 7, pixels: int = 4096, seed: int = 0):
        self.max_colours, self.pixels, self.seed = max_colours, pixels, seed
        self.codec = folder_modality(self.modality)

    def __call__(self, images, stems):
        from skimage.color import rgb2lab
        from sklearn.cluster import KMeans

        out = []
        for img in images:
            lab = rgb2lab(img.permute(1, 2, 0).cpu().numpy()).reshape(-1, 3)
            rng = np.random.default_rng(self.seed)
            sample = lab[rng.choice(len(lab), min(self.pixels, len(lab)), replace=False)]
            palettes = {}
            for k in range(1, self.max_colours + 1):
                km = KMeans(n_clusters=min(k, len(np.unique(sample, axis=0))), n_init=1, random_state=self.seed).fit(sample)
                order = np.argsort(-np.bincount(km.labels_, minlength=km.n_clusters))
                palettes[str(k)] = [[round(float(v), 3) for v in km.cluster_centers_[i]] for i in order]
            out.append(palettes)
        return out


@register_labeler("color_palette")
def _color_palette(in_dir: Path, **options) -> Labeler:
    return ColorPalette(**options)


# --- metadata ---------------------------------------------------------------------------------------------------------
# The range each metadata value is binned over (0..999); values outside are clipped.
METADATA_RANGES = {
    "original_width": (0, 4096), "original_height": (0, 4096), "crop_width": (0, 4096), "crop_height": (0, 4096),
    "brightness": (0, 1), "contrast": (0, 0.5), "saturation": (0, 1), "colorfulness": (0, 150), "entropy": (0, 8),
    "clutter_score": (0, 0.5), "instance_count": (0, 999), "instance_diversity": (0, 999), "semantic_count": (0, 999),
    "semantic_diversity": (0, 1), "objectness": (0, 1), "occlusion": (0, 1), "walkability": (0, 1),
    "geometric_complexity": (0, 1), "depth_range": (0, 20), "depth_mean": (0, 20), "caption_length": (0, 999),
}
assert set(METADATA_RANGES) == set(METADATA_TYPES)


def metadata_bins(values: dict[str, float]) -> dict[str, int]:
    """Raw metadata values -> bins 0..999 over :data:`METADATA_RANGES` (the serialized form)."""
    return {name: _bin([v], *METADATA_RANGES[name])[0] for name, v in values.items()}


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Brightness, RMS contrast, saturation, colourfulness (Hasler & Suesstrunk) and grey-level entropy (bits) of an
    [H, W, 3] image in [0, 1], with its width and height."""
    from skimage.color import rgb2hsv

    grey = rgb @ np.array(LUMA)
    hsv = rgb2hsv(rgb)
    r, g, b = (rgb[..., i] * 255 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    hist = np.bincount(np.clip((grey * 255).astype(int), 0, 255).ravel(), minlength=256) / grey.size
    hist = hist[hist > 0]
    h, w = grey.shape
    return {"original_width": w, "original_height": h, "crop_width": w, "crop_height": h,
            "brightness": float(hsv[..., 2].mean()), "contrast": float(grey.std()), "saturation": float(hsv[..., 1].mean()),
            "colorfulness": float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
            "entropy": float(-(hist * np.log2(hist)).sum())}


def scene_statistics(instance: np.ndarray, semseg: np.ndarray, normal: np.ndarray | None, depth: np.ndarray | None,
                     instance_classes: dict[int, int] | None = None) -> dict[str, float]:
    """What an image holds and its geometry, from instance ids (0 = none), semantic classes (1 = floor), normals
    ([H, W, 3] unit vectors) and depth (metres):

    instance_count / instance_diversity: objects and their distinct classes; semantic_count / semantic_diversity:
    classes present and the normalised entropy of their areas; objectness: the fraction of pixels on objects;
    occlusion: the fraction of objects that touch another object (one in front of the other); walkability: the floor's
    fraction; geometric_complexity: 1 - |mean normal| over 8 x 8 patches, averaged; depth_range / depth_mean."""
    from skimage.segmentation import find_boundaries

    ids = [i for i in np.unique(instance) if i != 0]
    classes = np.unique(semseg[semseg > 0])
    areas = np.array([(semseg == c).sum() for c in classes], float)
    p = areas / max(areas.sum(), 1)
    diversity = float(-(p * np.log(p)).sum() / np.log(len(p))) if len(p) > 1 else 0.0
    touching = 0
    for i in ids:
        ring = find_boundaries(instance == i, mode="outer")
        neighbours = set(np.unique(instance[ring])) - {0, i}
        touching += bool(neighbours)
    inst_classes = instance_classes or {int(i): int(np.bincount(semseg[instance == i]).argmax()) for i in ids}
    out = {"instance_count": len(ids), "instance_diversity": len(set(inst_classes.values())),
           "semantic_count": len(classes), "semantic_diversity": diversity,
           "objectness": float((instance > 0).mean()), "occlusion": touching / len(ids) if ids else 0.0,
           "walkability": float((semseg == 1).mean())}
    if normal is not None:
        h, w = normal.shape[:2]
        ph, pw = h // 8 * 8, w // 8 * 8
        patches = normal[:ph, :pw].reshape(ph // 8, 8, pw // 8, 8, 3).mean((1, 3))
        out["geometric_complexity"] = float(1 - np.linalg.norm(patches, axis=-1).mean())
    if depth is not None:
        valid = depth[depth > 0]
        out["depth_range"] = float(valid.max() - valid.min()) if valid.size else 0.0
        out["depth_mean"] = float(valid.mean()) if valid.size else 0.0
    return out


class Metadata(Labeler):
    """The metadata of each image: its statistics, and, where the split holds them (the world's ground truth or
    other labels), what it holds and its geometry (:func:`scene_statistics`), the clutter score (the fraction of
    Canny edge pixels) and the caption's length in words. Written as raw values; :func:`metadata_bins` bins them."""

    name = modality = "metadata"

    def __init__(self, split: Path):
        self.split = Path(split)
        self.codec = folder_modality(self.modality)

    def _read(self, modality: str, stem: str):
        path = FOURM_MODALITIES[modality].path(self.split, stem)
        return FOURM_MODALITIES[modality].decode(path) if path.exists() else None

    def __call__(self, images, stems):
        from skimage.feature import canny

        out = []
        for img, grey, stem in zip(images, _grey(images), stems):
            values = image_statistics(img.permute(1, 2, 0).cpu().numpy().astype(np.float64))
            values["clutter_score"] = float(canny(grey, sigma=2.0).mean())
            inst, sem = self._read("instance", stem), self._read("semseg", stem)
            if inst is not None and sem is not None:
                values.update(scene_statistics(np.asarray(inst), np.asarray(sem), self._read("normal", stem),
                                               self._read("depth", stem)))
            caption = self._read("caption", stem)
            if caption is not None:
                values["caption_length"] = len(caption.split())
            out.append(values)
        return out


@register_labeler("metadata")
def _metadata(in_dir: Path, **_) -> Labeler:
    return Metadata(in_dir.parent)


# --- ViT features: DINOv2, ImageBind, CLIP maps and global embeddings --------------------------------------------------
class VitFeatures(Labeler):
    """Patch-token maps [C, h, w] (``global_=False``) or the pooled embedding [C] (``global_=True``) of a timm ViT,
    stored as float16 .npy in ``<folder>/`` (or ``<folder>_global/``). ``model`` is a timm name (``vit_small_patch14_dinov2`` for DINOv2 maps on a 16 x 16 grid
    at 224 px, ``vit_base_patch16_clip_224`` for CLIP); ``checkpoint`` a local weights file (else random, seeded).
    ``project=True`` maps every patch token through the model's head, the CLIP image projection (768 -> 512 for
    CLIP-B/16: the feature maps the official CLIP tokenizer takes)."""

    def __init__(self, model: str = "vit_small_patch14_dinov2", folder: str = "dinov2", global_: bool = False,
                 checkpoint: str | None = None, image_size: int = 224, seed: int = 0, device: str = "cpu",
                 project: bool = False, project_dim: int = 512):
        import timm

        torch.manual_seed(seed)
        kw = {"img_size": image_size, "num_classes": project_dim if project else 0}
        self.net = timm.create_model(model, pretrained=False, **kw)
        self.weights = "random (seeded)"
        if checkpoint:
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint}: no such weights file for {model}")
            self.weights = str(checkpoint)
            state = read_state_dict(checkpoint)
            # timm's own converter of the model family (OpenAI / open_clip CLIP, DINOv2 layouts -> timm names)
            convert = getattr(sys.modules[type(self.net).__module__], "checkpoint_filter_fn", None)
            state = convert(state, self.net) if convert else state
            if not project:  # a feature map needs no classifier / projection
                state = {k: v for k, v in state.items() if not k.startswith("head.")}
            load_strict(self.net, state, str(checkpoint), f"timm {model}")
        self.net.eval().to(device)
        cfg = self.net.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
        self.image_size, self.device, self.global_, self.project = image_size, device, global_, project
        self.name = self.modality = f"{folder}_global" if global_ else folder
        if not has_spec(self.modality):  # a folder of its own name: register what it holds
            register_spec(ModalitySpec(self.modality, "npy", value="embedding", official_input="global") if global_
                          else feature_map(self.modality))
        self.codec = folder_modality(self.modality)  # .npy

    @torch.no_grad()
    def __call__(self, images, stems):
        x = torch.nn.functional.interpolate(images.to(self.device), size=(self.image_size,) * 2, mode="bilinear",
                                            antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        tokens = self.net.forward_features(x)
        if self.global_:
            return [v.cpu().numpy().astype(np.float16) for v in self.net.forward_head(tokens, pre_logits=True)]
        patches = tokens[:, self.net.num_prefix_tokens:]
        if self.project:  # the head after the model's final norm: per token, as it maps the pooled token
            patches = self.net.head(getattr(self.net, "fc_norm", torch.nn.Identity())(patches))
        grid = self.net.patch_embed.grid_size
        maps = patches.transpose(1, 2).reshape(len(images), -1, *grid)
        return [m.cpu().numpy().astype(np.float16) for m in maps]


@register_labeler("vit_features")
def _vit_features(in_dir: Path, **options) -> Labeler:
    return VitFeatures(global_=False, **options)


@register_labeler("vit_global")
def _vit_global(in_dir: Path, **options) -> Labeler:
    return VitFeatures(global_=True, **options)


@register_labeler("clip_features")
def _clip_features(in_dir: Path, **options) -> Labeler:
    """CLIP-B/16 patch tokens through CLIP's image projection at 224 px: ``clip/<stem>.npy`` float16 [512, 14, 14],
    the feature maps the official CLIP tokenizer takes. ``checkpoint``: OpenAI's or open_clip's CLIP-B/16 weights
    (safetensors, converted to timm's names by timm)."""
    return VitFeatures(model="vit_base_patch16_clip_224", folder="clip", project=True, **options)


# --- T5 caption embeddings --------------------------------------------------------------------------------------------
class TextEmbedder(abc.ABC):
    """A text encoder: each caption -> a float array ``[length, dim]`` (4M-21 reads T5-XXL's, dim 4096)."""

    @abc.abstractmethod
    def embed(self, texts: list[str]) -> list[np.ndarray]:
        """One ``[length, dim]`` array per text (length <= max_length, padding removed)."""


class T5Embedder(TextEmbedder):
    """A T5 encoder and its tokenizer from a local folder (``transformers``' ``T5EncoderModel``; T5-XXL for 4M-21)."""

    def __init__(self, path: str, max_length: int = 77, device: str = "cpu"):
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError:
            raise ImportError("the t5_caption labeler with checkpoint= needs `pip install transformers sentencepiece` "
                              "(without a checkpoint it uses the seeded stand-in encoder)") from None
        if not Path(path).is_dir():
            raise FileNotFoundError(f"checkpoint {path}: no such folder (a saved T5 model and tokenizer)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = T5EncoderModel.from_pretrained(path).eval().to(device)
        self.max_length, self.device = max_length, device

    @torch.no_grad()
    def embed(self, texts):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        h = self.model(**{k: v.to(self.device) for k, v in batch.items()}).last_hidden_state.float().cpu()
        return [h[i, : int(m.sum())].numpy() for i, m in enumerate(batch["attention_mask"])]


class HashedWordEncoder(TextEmbedder):
    """A stand-in for T5 with seeded random weights: each lower-cased word hashed into an embedding table, mixed by
    one self-attention layer, projected to ``dim``, plus an end-of-text row. The same caption always gives the same
    array; captions that differ in a word differ there and, through the attention, around it."""

    def __init__(self, dim: int = 4096, width: int = 64, buckets: int = 8192, max_length: int = 77, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(buckets + 1, width, generator=gen)  # the last row: end of text
        self.pos = torch.randn(max_length, width, generator=gen) * 0.1
        self.qkv = torch.randn(width, 3 * width, generator=gen) / width ** 0.5
        self.proj = torch.randn(width, dim, generator=gen) / width ** 0.5
        self.buckets, self.max_length = buckets, max_length

    def embed(self, texts):
        import zlib

        out = []
        for text in texts:
            ids = [zlib.crc32(w.encode()) % self.buckets for w in text.lower().split()][: self.max_length - 1]
            x = self.table[ids + [self.buckets]] + self.pos[: len(ids) + 1]
            q, k, v = (x @ self.qkv).chunk(3, dim=-1)
            x = x + torch.softmax(q @ k.T / q.shape[-1] ** 0.5, dim=-1) @ v
            out.append((torch.nn.functional.layer_norm(x, x.shape[-1:]) @ self.proj).numpy())
        return out


class T5Captions(Labeler):
    """The T5 embeddings of each image's caption (``<split>/caption``), stored as float16 ``[length, dim]`` .npy."""

    name = modality = "t5_caption"

    def __init__(self, split: Path, embedder: TextEmbedder):
        self.split, self.embedder = Path(split), embedder
        self.codec = folder_modality(self.modality)

    def __call__(self, images, stems):
        paths = [FOURM_MODALITIES["caption"].path(self.split, s) for s in stems]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: t5_caption embeds the split's captions ({len(missing)} missing)")
        texts = [FOURM_MODALITIES["caption"].decode(p) for p in paths]
        return [e.astype(np.float16) for e in self.embedder.embed(texts)]


@register_labeler("t5_caption")
def _t5_caption(in_dir: Path, checkpoint: str | None = None, seed: int = 0, device: str = "cpu", **_) -> Labeler:
    embedder = T5Embedder(checkpoint, device=device) if checkpoint else HashedWordEncoder(seed=seed)
    return T5Captions(in_dir.parent, embedder)


# --- human poses ------------------------------------------------------------------------------------------------------
class HumanPoseSource(abc.ABC):
    """A pose estimator (e.g. a 4DHumans/HMR2 model): the people of an image with their SMPL parameters."""

    @abc.abstractmethod
    def people(self, image: torch.Tensor) -> list[dict]:
        """Per person: ``box`` (x0, y0, x1, y1 in [0, 1]), ``global_orient`` (3 x 3 rotation), ``betas`` (10),
        ``camera`` (3: scale and x, y translation), ``pose_tokens`` (8 ids of a pose tokenizer)."""


# The value ranges the pose groups are binned over.
POSE_RANGES = {"global": (-1.0, 1.0), "shape": (-5.0, 5.0), "camera": (-3.0, 3.0)}


def _bin(values: Sequence[float], lo: float, hi: float) -> list[int]:
    return [int(np.clip(round((float(v) - lo) / (hi - lo) * (BINS - 1)), 0, BINS - 1)) for v in values]


def _unbin(bins: Sequence[int], lo: float, hi: float) -> np.ndarray:
    return lo + np.asarray(bins, float) / (BINS - 1) * (hi - lo)


def pose_from_params(person: dict) -> HumanPose:
    """A person's parameters (see :class:`HumanPoseSource`) -> the binned :class:`HumanPose` that is serialized."""
    return HumanPose(box=_bin(person["box"], 0.0, 1.0),
                     global_orient=_bin(np.asarray(person["global_orient"]).reshape(9), *POSE_RANGES["global"]),
                     shape=_bin(person["betas"], *POSE_RANGES["shape"]),
                     camera=_bin(person["camera"], *POSE_RANGES["camera"]),
                     pose=[int(t) for t in person["pose_tokens"]])


def params_from_pose(pose: HumanPose) -> dict:
    """The inverse of :func:`pose_from_params`, to bin precision."""
    return {"box": _unbin(pose.box, 0.0, 1.0), "global_orient": _unbin(pose.global_orient, *POSE_RANGES["global"]).reshape(3, 3),
            "betas": _unbin(pose.shape, *POSE_RANGES["shape"]), "camera": _unbin(pose.camera, *POSE_RANGES["camera"]),
            "pose_tokens": list(pose.pose)}
