"""Generated tokens back to data: image-like tokens through their tokenizer, sequences through the text tokenizer.

Image-like tokens go through their tokenizer's decoder (depth, normals, semseg class maps, RGB); captions to
text; ``det`` to boxes ``(xmin, ymin, xmax, ymax, class)`` in pixels.
"""
from __future__ import annotations

import re

import torch

from fourm.data.text import coord_bins, text_to_boxes
from fourm.modalities import has_spec, spec

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
        return domain in self.tokenizers or (self._is_text(domain) and self.text_tokenizer is not None)

    @staticmethod
    def _is_text(domain: str) -> bool:
        """A sequence written as text (captions, boxes as text) that the text tokenizer turns back."""
        return has_spec(domain) and spec(domain).value in ("text", "boxes")

    @torch.no_grad()
    def decode(self, domain: str, d: dict) -> list:
        """Per row: a modality tensor (image-like), a string (caption) or a list of boxes (det)."""
        if domain in self.tokenizers:
            vq = self.tokenizers[domain]
            g = vq.config.grid
            return list(vq.decode(d["tensor"].reshape(-1, g, g).long()))
        if self._is_text(domain):
            texts = [sequence_text(t[~m], self.text_tokenizer) for t, m in zip(d["tensor"], d["input_mask"])]
            if spec(domain).value == "boxes":
                return [text_to_boxes(t, self.image_size, self.bins) for t in texts]
            return texts
        raise KeyError(f"no tokenizer to decode {domain!r}; pass tokenizers.{domain.split('@')[0].removeprefix('tok_')}=<run>")

    def modality(self, domain: str) -> str:
        """The folder modality a domain decodes to ('depth', 'semseg', 'caption', ...)."""
        return self.tokenizers[domain].config.modality if domain in self.tokenizers else spec(domain).name
