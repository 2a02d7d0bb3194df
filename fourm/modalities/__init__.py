"""The modality registry: name -> what the model needs to know about a modality.

Kinds:
  ``image``               raw pixels, patch-embedded (``rgb@224``); encoder-only.
  ``image_tokens``        a 2-D grid of discrete VQ tokens (``tok_depth@224``); with ``pos_emb="learned"`` a small
                          set of global tokens, each with its own learned position embedding (``tok_dinov2_global``).
  ``sequence``            a 1-D token sequence with span masking (``caption``, ``det``, ``metadata``, ...).
  ``embedding_sequence``  a sequence of float embeddings with a validity mask (``t5_caption``); encoder-only.

The table below is the official 4M-21 release (4M-7 is the subset :data:`MOD7`); your own modalities are added with
:func:`register`. Patch sizes are those of the official 224 px models: a model of another resolution keeps each
modality's grid relative to its own (``FourM.modality_info`` holds what a model sees). Modality ids follow the
official code: sha256 of the name, modulo 2**15.

What the data of a modality is (its folder and files, tensors, crop rules, tokenizer, metric, picture) is its spec,
registered once in :mod:`fourm.modalities.specs` (``spec(name)`` finds it by either name; ``register_spec`` adds one).
"""
from __future__ import annotations

import dataclasses
import hashlib

KINDS = ("image", "image_tokens", "sequence", "embedding_sequence")


def modality_id(name: str) -> int:
    """Official 4M modality id: sha256(name) as an integer, modulo 2**15 (fits in int16)."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % (2**15)


@dataclasses.dataclass(frozen=True)
class Modality:
    name: str
    kind: str
    vocab_size: int | None = None  # None for raw images
    input_size: int = 224  # image side in pixels (image / image_tokens)
    patch_size: int = 16  # pixels per token side (image / image_tokens)
    num_channels: int = 3  # raw images only
    max_length: int = 256  # sequences: max tokens of the input/target sequence
    min_tokens: int = 0
    max_tokens: int | None = None  # None: every token of the grid
    pad_id: int = 0  # sequences
    tokenizer: str | None = None  # where the official tokenizer lives (informational)
    pos_emb: str = "sincos"  # image_tokens: "sincos" (a fixed 2-D table) or "learned" (global tokens)
    embedding_dim: int | None = None  # embedding_sequence: width of the input embeddings (T5-XXL: 4096)
    id: int = -1

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens this modality contributes at most (grid cells for images, max_tokens for sequences)."""
        if self.kind in ("sequence", "embedding_sequence"):
            return self.max_tokens or self.max_length
        return self.max_tokens or self.grid * self.grid

    @property
    def has_decoder(self) -> bool:
        return self.kind in ("image_tokens", "sequence")

    @property
    def type(self) -> str:
        """The official type: 'img' (images, token grids, global tokens), 'seq' or 'seq_emb'."""
        return {"sequence": "seq", "embedding_sequence": "seq_emb"}.get(self.kind, "img")

    def __getitem__(self, key: str):
        """The official ``modality_info[name][key]`` view, so code written against ml-4m reads this registry as is:
        ``type`` is 'img' or 'seq', ``max_tokens`` the tokens it has; other keys are the fields of the same name."""
        if key == "type":
            return self.type
        if key == "max_tokens":
            return self.num_tokens
        if key in _INFO_KEYS:
            return getattr(self, key)
        raise KeyError(f"modality {self.name!r} has no info key {key!r}; keys: ['type', 'max_tokens', *{sorted(_INFO_KEYS)}]")

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default


_INFO_KEYS = {"id", "name", "vocab_size", "input_size", "patch_size", "num_channels", "min_tokens", "num_tokens", "pad_id"}


_REGISTRY: dict[str, Modality] = {}


def register(name: str, kind: str, *, overwrite: bool = False, **fields) -> Modality:
    """Add a modality to the registry (4M-21 modalities, your own pseudo-labels...)."""
    if kind not in KINDS:
        raise ValueError(f"modality {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"modality {name!r} is already registered (pass overwrite=True to replace it)")
    if kind in ("image_tokens", "sequence") and not fields.get("vocab_size"):
        raise ValueError(f"modality {name!r}: a {kind} modality needs vocab_size")
    if kind == "embedding_sequence" and not fields.get("embedding_dim"):
        raise ValueError(f"modality {name!r}: an embedding_sequence needs embedding_dim (the input embeddings' width)")
    if fields.get("pos_emb", "sincos") not in ("sincos", "learned"):
        raise ValueError(f"modality {name!r}: pos_emb must be 'sincos' or 'learned', got {fields['pos_emb']!r}")
    mod = Modality(name=name, kind=kind, id=modality_id(name), **fields)
    _REGISTRY[name] = mod
    return mod


def unregister(name: str) -> None:
    """Remove a modality (tests and interactive sessions that registered their own)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Modality:
    """Look up a modality; unknown names raise one error listing what exists."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown modality {name!r}; registered: {sorted(_REGISTRY)}. "
            "Register it with fourm.modalities.register(name, kind, ...)"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def check(names_: list[str], where: str = "config") -> list[Modality]:
    """Resolve a list of modality names, failing once with every unknown name."""
    unknown = [n for n in names_ if n not in _REGISTRY]
    if unknown:
        raise KeyError(
            f"{where}: unknown modalities {unknown}; registered: {sorted(_REGISTRY)}. "
            "Register them with fourm.modalities.register(name, kind, ...)"
        )
    return [_REGISTRY[n] for n in names_]


# --- 4M-21 (the official release's table; 4M-7 is its first eight) -------------------------------------------
register("rgb@224", "image", num_channels=3)
register("tok_rgb@224", "image_tokens", vocab_size=16384, tokenizer="EPFL-VILAB/4M_tokenizers_rgb_16k_224-448")
register("tok_depth@224", "image_tokens", vocab_size=8192, tokenizer="EPFL-VILAB/4M_tokenizers_depth_8k_224-448")
register("tok_normal@224", "image_tokens", vocab_size=8192, tokenizer="EPFL-VILAB/4M_tokenizers_normal_8k_224-448")
register("tok_semseg@224", "image_tokens", vocab_size=4096, tokenizer="EPFL-VILAB/4M_tokenizers_semseg_4k_224-448")
register("tok_clip@224", "image_tokens", vocab_size=8192, tokenizer="EPFL-VILAB/4M_tokenizers_CLIP-B16_8k_224-448")
register("caption", "sequence", vocab_size=30000, max_length=256, max_tokens=256)
register("det", "sequence", vocab_size=30000, max_length=256, max_tokens=256)

MOD7 = ["rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224", "tok_clip@224", "caption", "det"]

# patch-14 feature maps (16 x 16 tokens at 224 px), their global embeddings (16 tokens, patch 56: a 4 x 4 grid with a
# learned position embedding), edges, and text modalities sharing the caption's WordPiece vocabulary
register("tok_dinov2@224", "image_tokens", vocab_size=8192, patch_size=14, tokenizer="EPFL-VILAB/4M_tokenizers_DINOv2-B14_8k_224-448")
register("tok_imagebind@224", "image_tokens", vocab_size=8192, patch_size=14, tokenizer="EPFL-VILAB/4M_tokenizers_ImageBind-H14_8k_224-448")
register("tok_dinov2_global", "image_tokens", vocab_size=8192, patch_size=56, max_tokens=16, pos_emb="learned",
         tokenizer="EPFL-VILAB/4M_tokenizers_DINOv2-B14-global_8k_16_224")
register("tok_imagebind_global", "image_tokens", vocab_size=8192, patch_size=56, max_tokens=16, pos_emb="learned",
         tokenizer="EPFL-VILAB/4M_tokenizers_ImageBind-H14-global_8k_16_224")
register("tok_canny_edge@224", "image_tokens", vocab_size=8192, tokenizer="EPFL-VILAB/4M_tokenizers_edge_8k_224-512")
register("tok_sam_edge@224", "image_tokens", vocab_size=8192, tokenizer="EPFL-VILAB/4M_tokenizers_edge_8k_224-512")
register("color_palette", "sequence", vocab_size=30000, max_length=23, max_tokens=23)
register("metadata", "sequence", vocab_size=30000, max_length=40, max_tokens=40)
register("human_poses", "sequence", vocab_size=30000, max_length=263, max_tokens=275)  # as released: 275 vs 263
register("sam_instance", "sequence", vocab_size=30000, max_length=290, max_tokens=290)
register("t5_caption", "embedding_sequence", embedding_dim=4096, max_length=77, max_tokens=77)

MOD21 = MOD7 + ["tok_dinov2@224", "tok_imagebind@224", "tok_dinov2_global", "tok_imagebind_global",
                "tok_canny_edge@224", "tok_sam_edge@224", "color_palette", "metadata", "human_poses", "sam_instance",
                "t5_caption"]


# --- what each modality of the folder layout is (codec, tensors, tokenizer, metric, picture) -------------------
from fourm.modalities.specs import (  # noqa: E402  (the specs name token modalities registered above)
    ModalitySpec,
    folder_of,
    has_spec,
    register_family,
    register_spec,
    sequence_members,
    spec,
    specs,
    unregister_spec,
)
