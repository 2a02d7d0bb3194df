"""Small drawing helpers for the renderers of :mod:`fourm.modalities.specs`: boxes on an image, text on a tile."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


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
