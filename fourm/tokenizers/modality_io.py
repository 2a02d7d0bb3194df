"""Modality files of the 4M folder layout as tokenizer tensors, and aligned crops of them.

A *modality tensor* is what a :class:`~fourm.tokenizers.vqvae.VQVAE` takes and returns (no batch dim here):
rgb float [3,H,W] in [0,1]; depth float [1,H,W] metres (0 = none); normal float [3,H,W] unit vectors (camera frame,
x right); semseg long [H,W] class ids; edges (canny_edge, sam_edge) float [1,H,W] in {0, 1}; feature maps (clip,
dinov2, imagebind, feat_*) float [C,h,w]. Each modality's spec (:mod:`fourm.modalities.specs`) says how.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fourm.data.layouts import FOURM_MODALITIES, folder_modality
from fourm.modalities import spec, specs


def split_root(data: str | os.PathLike, split: str | None) -> Path:
    """``<data>/<split>`` if it exists, else ``<data>`` when it already is a split folder (has modality folders)."""
    data = Path(data)
    if split and (data / split).is_dir():
        return data / split
    if any((data / m).is_dir() for m in FOURM_MODALITIES):
        return data
    raise FileNotFoundError(
        f"{data}: no split folder {split!r} and no modality folders ({', '.join(FOURM_MODALITIES)}); "
        "point data= at a 4M-layout dataset (e.g. written by `fourm-bench world`)"
    )


def _stems_in(folder: Path, ext: str) -> set[str]:
    """The stems of a modality folder: its files, or those one folder down (the official hierarchical layout
    ``<modality>/<folder>/<key>.<ext>``, stems ``<folder>/<key>``)."""
    found = {p.name[: -len(ext)] for p in folder.iterdir() if p.name.endswith(ext) and not p.name.startswith(".")}
    if found:
        return found
    for sub in (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        found |= {f"{sub.name}/{p.name[: -len(ext)]}" for p in sub.iterdir()
                  if p.name.endswith(ext) and not p.name.startswith(".")}
    return found


def list_stems(root: str | os.PathLike, modalities: list[str] | tuple[str, ...]) -> list[str]:
    """Sorted stems present in every given modality folder of a split (``<folder>/<key>`` in the official
    hierarchical layout); a missing folder is one clear error."""
    root = Path(root)
    stems = None
    for m in modalities:
        folder = root / m
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: modality folder missing (needed for {m}); found {sorted(p.name for p in root.iterdir() if p.is_dir())}")
        found = _stems_in(folder, folder_modality(m).ext)
        stems = found if stems is None else stems & found
    if not stems:
        raise FileNotFoundError(f"{root}: no sample has all of {list(modalities)}")
    return sorted(stems)


def read_raw(root: str | os.PathLike, modality: str, stem: str):
    """Decoded file (numpy array, list or str) of one sample's modality."""
    codec = folder_modality(modality)
    path = codec.path(root, stem)
    try:
        return codec.decode(path)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot decode {modality} file ({e}); regenerate or remove it") from e


def to_tensor(modality: str, array) -> torch.Tensor:
    """Decoded file -> modality tensor (see module docstring and :class:`fourm.modalities.ModalitySpec`)."""
    s = spec(modality)
    if not s.is_map:
        raise KeyError(f"{modality!r} is not an image-like modality (its spec has no resize rule); tokenizers exist "
                       f"for {sorted(n for n, x in specs().items() if x.tokenizer)}")
    return s.to_tensor(array)


def crop_resize_flip(modality: str, x: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """Crop ``box = (top, left, height, width)`` of a modality tensor, resize to ``size`` x ``size``, maybe h-flip,
    by the modality's spec: RGB and feature maps bilinearly (antialiased), depth, normals, edges and label maps with
    nearest neighbour so that no value is invented across object edges; a flip negates the normals' x component."""
    return spec(modality).crop_resize_flip(x, box, size, flip)


def scale_box(box: tuple[int, int, int, int], size: tuple[int, int], to: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box (top, left, h, w) in an image of ``size`` (H, W) as the same region of a map of ``to`` (h, w), e.g. a
    ViT feature map of 16 x 16 cells: edges rounded to whole cells, at least one cell."""
    (H, W), (fh, fw) = size, to
    top, left, h, w = box
    t, l = min(round(top * fh / H), fh - 1), min(round(left * fw / W), fw - 1)
    b, r = max(round((top + h) * fh / H), t + 1), max(round((left + w) * fw / W), l + 1)
    return t, l, min(b, fh) - t, min(r, fw) - l


def center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square."""
    s = min(height, width)
    return (height - s) // 2, (width - s) // 2, s, s


def load_modality(
    root: str | os.PathLike, modality: str, size: int, stems: list[str] | None = None, desc: str = "", progress: bool = True
) -> torch.Tensor:
    """Every sample of one modality folder, centre-cropped and resized to ``size``, stacked in memory (tiny datasets)."""
    stems = stems if stems is not None else list_stems(root, [modality])
    out = []
    for stem in tqdm(stems, desc=desc or f"load {modality}", unit="img", leave=False, disable=not progress):
        x = to_tensor(modality, read_raw(root, modality, stem))
        out.append(crop_resize_flip(modality, x, center_box(*x.shape[-2:]), size, False))
    return torch.stack(out)


def random_box(height: int, width: int, gen: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A RandomResizedCrop-style box (top, left, h, w): area fraction in ``scale``, aspect ratio in ``ratio``."""
    area = height * width
    log_r = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = float(np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1]))
        w = int(round((target * aspect) ** 0.5))
        h = int(round((target / aspect) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    return center_box(height, width)


def crop_boxes(boxes: list, box: tuple[int, int, int, int], flip: bool, min_visible: float = 0.25) -> list:
    """Detection boxes ``[x0, y0, x1, y1, class]`` (pixel edges) -> the same boxes in the crop, normalised to [0, 1].

    Boxes keeping less than ``min_visible`` of their area inside the crop are dropped (a sliver is not an object).
    """
    top, left, h, w = box
    out = []
    for x0, y0, x1, y1, cls in boxes:
        area = max(x1 - x0, 0) * max(y1 - y0, 0)
        cx0, cy0 = max(x0, left), max(y0, top)
        cx1, cy1 = min(x1, left + w), min(y1, top + h)
        if cx1 <= cx0 or cy1 <= cy0 or area <= 0 or (cx1 - cx0) * (cy1 - cy0) < min_visible * area:
            continue
        nx0, nx1 = (cx0 - left) / w, (cx1 - left) / w
        if flip:
            nx0, nx1 = 1 - nx1, 1 - nx0
        out.append([round(nx0, 5), round((cy0 - top) / h, 5), round(nx1, 5), round((cy1 - top) / h, 5), str(cls)])
    return out
