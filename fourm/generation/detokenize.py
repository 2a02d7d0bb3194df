"""Generated tokens back to data with the project's own tokenizers, and pictures of them for people.

Image-like tokens go through their VQ-VAE decoder (depth in metres, normals, semseg class maps, RGB); captions to
text; ``det`` to boxes ``(xmin, ymin, xmax, ymax, class)`` in pixels.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image, ImageDraw

from fourm.data.text import coord_bins, text_to_boxes
from fourm.tokenizers.decode import to_rgb

_SPECIAL = re.compile(r"\[(PAD|EOS|SOS|UNK|S_\d+)\]")


def sequence_text(ids, text_tokenizer) -> str:
    """The visible tokens of a generated sequence as text, special markers ([PAD], [S_i], [EOS]) removed."""
    text = text_tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
    return " ".join(_SPECIAL.sub(" ", text).split())


class Detokenizer:
    """Decodes a generated mod_dict row by row.

    ``tokenizers``: token modality name (``tok_depth@224``) -> VQ-VAE; ``text_tokenizer``: the model's text
    tokenizer; ``image_size``: pixels of the model's images (box coordinates are relative to it)."""

    def __init__(self, tokenizers: dict, text_tokenizer=None, image_size: int = 224):
        self.tokenizers = tokenizers
        self.text_tokenizer = text_tokenizer
        self.image_size = image_size
        self.bins = coord_bins(text_tokenizer) if text_tokenizer is not None else None

    def can_decode(self, domain: str) -> bool:
        return domain in self.tokenizers or (domain in ("caption", "det") and self.text_tokenizer is not None)

    @torch.no_grad()
    def decode(self, domain: str, d: dict) -> list:
        """Per row: a modality tensor (image-like), a string (caption) or a list of boxes (det)."""
        if domain in self.tokenizers:
            vq = self.tokenizers[domain]
            g = vq.config.grid
            return list(vq.decode(d["tensor"].reshape(-1, g, g).long()))
        if domain in ("caption", "det"):
            texts = [sequence_text(t[~m], self.text_tokenizer) for t, m in zip(d["tensor"], d["input_mask"])]
            if domain == "caption":
                return texts
            return [text_to_boxes(t, self.image_size, self.bins) for t in texts]
        raise KeyError(f"no tokenizer to decode {domain!r}; pass tokenizers.{domain.split('@')[0].removeprefix('tok_')}=<run>")

    def modality(self, domain: str) -> str:
        """'depth', 'semseg', 'normal', 'rgb', 'caption' or 'det'."""
        return self.tokenizers[domain].config.modality if domain in self.tokenizers else domain


def draw_boxes(rgb: np.ndarray, boxes: list, color=(255, 40, 40)) -> np.ndarray:
    """Boxes (pixels of ``rgb``) drawn with their class names on a copy of a uint8 HxWx3 image."""
    im = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(im)
    for x0, y0, x1, y1, name in boxes:
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=color)
        draw.text((x0 + 1, y0 + 1), str(name), fill=color)
    return np.asarray(im)


def text_tile(text: str, size: int = 128, width_chars: int = 20) -> np.ndarray:
    """A caption as a white tile with wrapped black text (uint8 HxWx3)."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width_chars and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    for i, ln in enumerate(lines[: size // 11]):
        draw.text((2, 2 + 11 * i), ln, fill=(0, 0, 0))
    return np.asarray(im)


def render(modality: str, value, rgb: np.ndarray | None = None, num_classes: int = 256) -> np.ndarray:
    """A decoded value as a picture: depth colour-mapped, normals as RGB, semseg with a palette, boxes on the input
    image, a caption as text."""
    if modality == "caption":
        return text_tile(value)
    if modality == "det":
        base = rgb if rgb is not None else np.full((128, 128, 3), 255, np.uint8)
        return draw_boxes(base, value)
    return to_rgb(modality, value.cpu(), num_classes=num_classes)
