"""Text side of 4M: the WordPiece tokenizer (official special-token layout) and boxes serialised as text.

The official 4M text tokenizer (``text_tokenizer_4m_wordpiece_30k.json``) is a HF ``tokenizers`` WordPiece model
whose first ids are fixed special tokens, in this order::

    0 [PAD]   1 [UNK]   2 [SOS]   3 [EOS]
    4..203    sentinels [S_0] .. [S_199]             (span masking)
    204..4203 coordinates v0=0..v0=999, v1=.., v2=.., v3=..   (xmin, ymin, xmax, ymax of a box)
    4204..    object class names (COCO: 80, sorted), one token each, e.g. "teddy bear"

:func:`train_wordpiece` reproduces that layout, so a tokenizer trained here has the same special ids as the official
one and the official JSON loads through :func:`load_tokenizer` like any other.

Boxes follow the official detection transform: coordinates normalised by the image size, quantised with
``round(v * (bins - 1))``, written ``v0=.. v1=.. v2=.. v3=.. <class>``, one chunk per box, boxes ordered by distance
of their top-left corner to the origin.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from fourm.runs import atomic_write_text

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
NUM_SENTINELS = 200
COORD_BINS = 1000
COORD_PREFIXES = ("v0", "v1", "v2", "v3")  # xmin, ymin, xmax, ymax

# The 80 COCO detection classes, sorted as in the official tokenizer's added tokens.
COCO_CLASSES = (
    "airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed", "bench", "bicycle",
    "bird", "boat", "book", "bottle", "bowl", "broccoli", "bus", "cake", "car", "carrot", "cat", "cell phone", "chair",
    "clock", "couch", "cow", "cup", "dining table", "dog", "donut", "elephant", "fire hydrant", "fork", "frisbee",
    "giraffe", "hair drier", "handbag", "horse", "hot dog", "keyboard", "kite", "knife", "laptop", "microwave",
    "motorcycle", "mouse", "orange", "oven", "parking meter", "person", "pizza", "potted plant", "refrigerator",
    "remote", "sandwich", "scissors", "sheep", "sink", "skateboard", "skis", "snowboard", "spoon", "sports ball",
    "stop sign", "suitcase", "surfboard", "teddy bear", "tennis racket", "tie", "toaster", "toilet", "toothbrush",
    "traffic light", "train", "truck", "tv", "umbrella", "vase", "wine glass", "zebra",
)


def sentinel(i: int) -> str:
    return f"[S_{i}]"


def coord_token(axis: int, value: int) -> str:
    return f"{COORD_PREFIXES[axis]}={value}"


def special_tokens(
    class_names: Sequence[str] = COCO_CLASSES, num_sentinels: int = NUM_SENTINELS, coord_bins: int = COORD_BINS
) -> list[AddedToken]:
    """The special tokens of a 4M text tokenizer, in id order (flags as in the official JSON)."""
    toks = [AddedToken(t, special=True) for t in (PAD, UNK, SOS, EOS)]
    # single_word + not normalized: "[S_1]" / "v0=12" only match as whole words and are never lower-cased apart
    toks += [AddedToken(sentinel(i), single_word=True, normalized=False, special=True) for i in range(num_sentinels)]
    toks += [
        AddedToken(coord_token(axis, v), single_word=True, normalized=False, special=True)
        for axis in range(len(COORD_PREFIXES))
        for v in range(coord_bins)
    ]
    # class names are normalized (lower-cased) so "Teddy Bear" in a caption still maps to the class token
    toks += [AddedToken(c, single_word=True, normalized=True, special=True) for c in sorted(class_names)]
    return toks


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids the masking code needs; ``sentinels[i]`` is the id of ``[S_i]``."""

    pad: int
    eos: int
    sos: int | None
    unk: int | None
    sentinels: tuple[int, ...]


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Read [PAD]/[EOS]/[SOS]/[UNK] and the sentinel ids from a tokenizer (fails if PAD, EOS or [S_0..] are missing)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    found = {int(m.group(1)): i for t, i in vocab.items() if (m := re.fullmatch(r"\[S_(\d+)\]", t))}
    n = 0
    while n in found:
        n += 1
    missing = [t for t in (PAD, EOS) if t not in vocab]
    if missing or n < 2:
        raise ValueError(
            f"text tokenizer lacks 4M special tokens ({missing or 'sentinels [S_0], [S_1], ...'}); "
            "train one with fourm.data.text.train_wordpiece or use the official 4M WordPiece JSON"
        )
    return SpecialIds(
        pad=vocab[PAD], eos=vocab[EOS], sos=vocab.get(SOS), unk=vocab.get(UNK), sentinels=tuple(found[i] for i in range(n))
    )


def coord_bins(tokenizer: Tokenizer) -> int | None:
    """How many coordinate bins the tokenizer's box tokens (``v0=0`` ... ``v3=<bins-1>``) have; None without any.

    Boxes must be written with this many bins: a coordinate the tokenizer lacks (``v0=999`` for a 128-bin one) would
    be split into word pieces, silently."""
    found = [int(m.group(1)) for t in tokenizer.get_vocab(with_added_tokens=True) if (m := re.fullmatch(r"v0=(\d+)", t))]
    return max(found) + 1 if found else None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a HF ``tokenizers`` JSON (the official 4M WordPiece JSON or one written by :func:`train_wordpiece`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"text tokenizer {path} does not exist; train one with fourm.data.text.train_wordpiece(texts, vocab_size, "
            "out_path) or point to the official text_tokenizer_4m_wordpiece_30k.json"
        )
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"text tokenizer {path} is not a valid tokenizers JSON: {e}") from None
    special_ids(tok)  # fail here, naming the file's problem, rather than deep inside masking
    return tok


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    out_path: str | os.PathLike | None = None,
    *,
    class_names: Sequence[str] = COCO_CLASSES,
    num_sentinels: int = NUM_SENTINELS,
    coord_bins: int = COORD_BINS,
    min_frequency: int = 0,
) -> Tokenizer:
    """Train a lower-cased BERT-style WordPiece tokenizer with the 4M special tokens first (stable ids).

    ``vocab_size`` counts the special tokens too (4,284 with the defaults), so it must be larger than that.
    Writes ``out_path`` atomically when given; refuses to overwrite an existing file.
    """
    specials = special_tokens(class_names, num_sentinels, coord_bins)
    if vocab_size <= len(specials):
        raise ValueError(
            f"train_wordpiece: vocab_size={vocab_size} leaves no room for words after the {len(specials)} special "
            f"tokens; use vocab_size > {len(specials)} (the official tokenizer uses 30000)"
        )
    if out_path is not None and Path(out_path).exists():
        raise FileExistsError(f"train_wordpiece: {out_path} exists; remove it or choose another path")
    tok = Tokenizer(WordPiece(unk_token=UNK))
    tok.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Not HF's WordPieceTrainer: it numbers characters in hash-map order and breaks ties between equally frequent
    # merges by those numbers, so the same captions gave different vocabularies from one process to the next (in the
    # demo, "octa"/"octahe" in one run, "##ta"/"##tahe" in another, and 42 of 4,401 ids moved), and a fresh demo
    # pretrained a different model. This vocabulary is a pure function of the texts: every character (alone and as a
    # "##" continuation, so no word is ever [UNK]), then whole words by frequency, ties by spelling.
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for w in counts for c in w})
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1 and n >= min_frequency]
    learned = list(dict.fromkeys(chars + [f"##{c}" for c in chars] + words))
    room = vocab_size - len(specials)
    if room < 2 * len(chars):
        raise ValueError(f"train_wordpiece: vocab_size={vocab_size} cannot hold the {len(specials)} special tokens and "
                         f"the {len(chars)} characters of the texts twice (alone and as '##' continuations); use "
                         f"vocab_size >= {len(specials) + 2 * len(chars)}")
    names = [t.content for t in specials]
    vocab = {t: i for i, t in enumerate(names)}
    for piece in learned[:room]:
        vocab.setdefault(piece, len(vocab))  # a word spelled like a special token keeps the special id
    tok.model = WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##")
    tok.add_special_tokens(specials)
    if out_path is not None:
        atomic_write_text(out_path, tok.to_str())
    return tok


def merge_spans(input_ids: Sequence[int], target_ids: Sequence[int], sentinel_ids: Sequence[int]) -> list[int]:
    """Undo span masking: replace each sentinel of the input by the tokens that follow it in the target.

    A sentinel whose span is missing from the target (e.g. a truncated target) is kept as is.
    """
    sentinels = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current = None
    for t in target_ids:
        if t in sentinels:
            current = t
            spans[t] = []
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in input_ids:
        out.extend(spans.get(t, [t]) if t in sentinels else [t])
    return out


# --- boxes as text ---------------------------------------------------------------------------------------------


def _hw(image_size: int | Sequence[int]) -> tuple[float, float]:
    if isinstance(image_size, int):
        return float(image_size), float(image_size)
    h, w = image_size
    return float(h), float(w)


def boxes_to_chunks(
    boxes: Sequence[Sequence], image_size: int | Sequence[int], bins: int = COORD_BINS, order: str | None = "dist_to_orig"
) -> list[str]:
    """One text chunk per box: ``"v0=<xmin> v1=<ymin> v2=<xmax> v3=<ymax> <class>"``.

    ``boxes``: ``(xmin, ymin, xmax, ymax, class_name)`` in pixels (extra fields such as a score are ignored);
    ``image_size``: ``(height, width)`` or one int. ``order``: ``"dist_to_orig"`` (official default: by
    xmin^2 + ymin^2), ``"area"`` (largest first) or ``None`` (keep the given order).
    """
    h, w = _hw(image_size)
    norm = []
    for i, b in enumerate(boxes):
        if len(b) < 5:
            raise ValueError(f"box {i}: expected (xmin, ymin, xmax, ymax, class_name, ...), got {b!r}")
        x0, y0, x1, y1 = (min(max(float(v) / s, 0.0), 1.0) for v, s in zip(b[:4], (w, h, w, h)))
        norm.append((x0, y0, x1, y1, str(b[4])))
    if order == "dist_to_orig":
        norm.sort(key=lambda b: b[0] ** 2 + b[1] ** 2)
    elif order == "area":
        norm.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    elif order is not None:
        raise ValueError(f"boxes_to_chunks: order must be 'dist_to_orig', 'area' or None, got {order!r}")
    q = bins - 1
    return [
        " ".join([*(coord_token(a, round(v * q)) for a, v in enumerate(b[:4])), b[4]]) for b in norm
    ]


def boxes_to_text(
    boxes: Sequence[Sequence], image_size: int | Sequence[int], bins: int = COORD_BINS, order: str | None = "dist_to_orig"
) -> str:
    """All boxes as one string (the official ``det`` text); see :func:`boxes_to_chunks`."""
    return " ".join(boxes_to_chunks(boxes, image_size, bins, order))


_COORD = re.compile(r"v([0-3])=(\d+)")


def text_to_boxes(
    text: str, image_size: int | Sequence[int], bins: int = COORD_BINS
) -> list[tuple[float, float, float, float, str]]:
    """Parse ``det`` text (or a decoded model output) back to pixel boxes ``(xmin, ymin, xmax, ymax, class_name)``.

    Tolerant of generated text: special tokens ([EOS], [S_3], ...) are dropped and a box is kept only when all four
    coordinates come in order (v0 v1 v2 v3) followed by a non-empty class name.
    """
    h, w = _hw(image_size)
    q = bins - 1
    out = []
    coords: list[int] = []
    words: list[str] = []

    def flush():
        if len(coords) == 4 and words:
            x0, y0, x1, y1 = coords
            out.append((x0 / q * w, y0 / q * h, x1 / q * w, y1 / q * h, " ".join(words)))

    for word in text.split():
        if re.fullmatch(r"\[[A-Z_0-9]+\]", word):
            continue
        m = _COORD.fullmatch(word)
        if m is None:
            if len(coords) == 4:
                words.append(word)
            continue
        axis, value = int(m.group(1)), int(m.group(2))
        if axis == 0:
            flush()
            coords, words = [value], []
        elif len(coords) == axis and not words:
            coords.append(value)
        else:  # out-of-order coordinate: drop the box being read
            coords, words = [], []
    flush()
    return out


# --- CLI (not yet mapped in fourm/cli.py; run as `python -m fourm.data.text`) ----------------------------------


def cli(argv: list[str]) -> int:
    """Train a 4M WordPiece tokenizer on text files (one caption per line)."""
    p = argparse.ArgumentParser(prog="python -m fourm.data.text", description=cli.__doc__)
    p.add_argument("files", nargs="+", help="text files, one caption per line")
    p.add_argument("--vocab-size", type=int, default=30000)
    p.add_argument("--out", required=True, help="tokenizer JSON to write (must not exist)")
    args = p.parse_args(argv)

    def lines():
        for f in args.files:
            with open(f, encoding="utf-8") as fh:
                yield from (line.strip() for line in fh if line.strip())

    tok = train_wordpiece(lines(), args.vocab_size, args.out)
    print(f"wrote {args.out}: {tok.get_vocab_size()} tokens")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli(sys.argv[1:]))
