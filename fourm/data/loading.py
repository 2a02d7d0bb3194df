"""Reading raw-modality folders of the 4M layout, with one random crop/flip applied to every modality of a sample.

    ds = MultimodalFolder("world/train", ["rgb", "depth", "semseg", "det", "caption"], transform=AlignedAugment(224))
    loader = DataLoader(ds, batch_size=8, collate_fn=collate)

A sample is ``{modality: value, "stem": str}``: rgb float [0, 1] 3xHxW, depth float metres 1xHxW, normal float
3xHxW (camera frame), semseg / instance int64 HxW, det a list of [x0, y0, x1, y1, class], caption a str, and any
other folder (e.g. a labeler's ``.npy`` features) a float tensor.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from fourm.data.layouts import folder_modality
from fourm.modalities import spec


class CorruptFileError(RuntimeError):
    """A modality file that is missing or cannot be decoded; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class MultimodalFolder(torch.utils.data.Dataset):
    """Samples of ``<root>/<modality>/<stem>.<ext>`` for the given modalities (stems present in any folder).

    ``on_error="raise"`` raises a :class:`CorruptFileError` naming the file; ``"skip"`` records ``(path, reason)``
    in ``self.skipped``, warns, and serves the next good sample instead. Stems missing a modality file are found
    at construction; undecodable files when read (or all at once with ``verify=True``, which shows a progress bar).
    """

    def __init__(self, root: str | os.PathLike, modalities: Sequence[str] = ("rgb",), transform=None,
                 on_error: str = "raise", verify: bool = False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"MultimodalFolder: on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder (expected <root>/<modality>/<stem>.<ext>)")
        self.modalities = list(modalities)
        self.codecs = {m: folder_modality(m, self.root) for m in self.modalities}
        self.transform, self.on_error = transform, on_error
        self.skipped: list[tuple[str, str]] = []
        present = {}
        for m, codec in self.codecs.items():
            present[m] = {p.name[: -len(codec.ext)] for p in (self.root / m).iterdir()
                          if p.name.endswith(codec.ext) and not p.name.startswith(".")}
        all_stems = sorted(set().union(*present.values()))
        self.stems = []
        for stem in all_stems:
            missing = [m for m in self.modalities if stem not in present[m]]
            if missing:
                self._fail(self.codecs[missing[0]].path(self.root, stem), f"missing (has {sorted(set(self.modalities) - set(missing))})")
            else:
                self.stems.append(stem)
        if verify:
            self.verify()

    def _fail(self, path, reason: str) -> None:
        if self.on_error == "raise":
            raise CorruptFileError(path, reason)
        self.skipped.append((str(path), reason))
        warnings.warn(f"MultimodalFolder: skipping {path}: {reason}", stacklevel=3)

    def _load(self, stem: str) -> dict:
        sample = {"stem": stem}
        for m, codec in self.codecs.items():
            path = codec.path(self.root, stem)
            try:
                sample[m] = codec.to_tensor(codec.decode(path))
            except Exception as e:  # any decoder failure is a bad file; name it
                raise CorruptFileError(path, f"{type(e).__name__}: {e}") from e
        return sample

    def verify(self) -> list[tuple[str, str]]:
        """Decode every file once; bad stems are raised or dropped (and recorded) now instead of mid-epoch."""
        good = []
        for stem in tqdm(self.stems, desc=f"verify {self.root.name}", unit="sample"):
            try:
                self._load(stem)
                good.append(stem)
            except CorruptFileError as e:
                self._fail(e.path, e.reason)
        self.stems = good
        return self.skipped

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.stems)):
            stem = self.stems[(index + attempt) % len(self.stems)]
            try:
                sample = self._load(stem)
            except CorruptFileError as e:
                self._fail(e.path, e.reason)
                continue
            return self.transform(sample) if self.transform is not None else sample
        raise RuntimeError(f"{self.root}: no readable sample left; skipped: {self.skipped[:5]}")


def collate(samples: list[dict]) -> dict:
    """Batch samples: tensors are stacked; boxes, captions and stems become lists."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class AlignedAugment:
    """The same random resized crop and horizontal flip for every modality of a sample.

    rgb (and other float maps, e.g. features) are resized bilinearly; depth, normals, semseg and instance with
    nearest-exact (no blended labels or depths across object edges); normals get x negated on a flip; boxes are
    moved, clipped and dropped when empty; captions are untouched. Crops are defined on the first image-like
    modality and applied in relative coordinates to modalities of another resolution.
    """

    def __init__(self, size: int | tuple[int, int] = 224, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5,
                 generator: torch.Generator | None = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.flip_prob, self.generator = scale, ratio, flip_prob, generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def crop_params(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(top, left, h, w) as fractions of the image, sampled like torchvision's RandomResizedCrop."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * self._rand())
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * self._rand())
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int((height - h + 1) * self._rand())
                left = int((width - w + 1) * self._rand())
                return top / height, left / width, h / height, w / width
        side = min(height, width)  # fallback: central square crop
        return (height - side) // 2 / height, (width - side) // 2 / width, side / height, side / width

    def __call__(self, sample: dict) -> dict:
        images = [k for k, v in sample.items() if isinstance(v, torch.Tensor) and v.dim() >= 2 and spec(k).is_map]
        if not images:
            return sample
        ref = sample[images[0]]
        H, W = ref.shape[-2:]
        top, left, ch, cw = self.crop_params(H, W)
        flip = self._rand() < self.flip_prob
        out = dict(sample)
        for key in images:
            out[key] = self._image(key, sample[key], top, left, ch, cw, flip, H)
        if isinstance(sample.get("det"), list):
            out["det"] = self._boxes(sample["det"], top * H, left * W, ch * H, cw * W, flip)
        return out

    def _image(self, key, x, top, left, ch, cw, flip, ref_h):
        h, w = x.shape[-2:]
        r0, c0 = int(round(top * h)), int(round(left * w))
        r1, c1 = r0 + max(1, int(round(ch * h))), c0 + max(1, int(round(cw * w)))
        size = (max(1, round(self.size[0] * h / ref_h)), max(1, round(self.size[1] * h / ref_h)))
        s = spec(key)
        y = s.resize_to(x[..., r0:r1, c0:c1], size)
        return s.hflip(y) if flip else y

    def _boxes(self, boxes, top, left, ch, cw, flip):
        sx, sy = self.size[1] / cw, self.size[0] / ch
        out = []
        for x0, y0, x1, y1, *rest in boxes:
            nx0, nx1 = [min(max((v - left) * sx, 0.0), self.size[1]) for v in (x0, x1)]
            ny0, ny1 = [min(max((v - top) * sy, 0.0), self.size[0]) for v in (y0, y1)]
            if nx1 <= nx0 or ny1 <= ny0:
                continue  # the crop left nothing of this box
            if flip:
                nx0, nx1 = self.size[1] - nx1, self.size[1] - nx0
            out.append([nx0, ny0, nx1, ny1, *rest])
        return out
