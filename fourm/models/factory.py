"""Model factories with the official 4M names, e.g. ``fm_base_12e_12d_swiglu_nobias``.

Sizes: tiny/small/base/large/xlarge as released; ``pico``/``nano``/``micro`` are CPU sizes of this suite for tests and demos.
Variants: ``gelu`` (ViT-style, with biases), ``swiglu_nobias`` (SwiGLU, no biases anywhere, as 4M-7/4M-21 releases),
``swiglu_qknorm_nobias`` (plus QK-norm).
"""
from __future__ import annotations

import re

from fourm.models.fourm import FourM

SIZES = {
    # name: (dim, heads, encoder depth, decoder depth)
    "pico": (32, 2, 2, 2),
    "nano": (64, 2, 2, 2),
    "micro": (128, 4, 4, 4),
    "tiny": (384, 6, 6, 6),
    "small": (512, 8, 8, 8),
    "base": (768, 12, 12, 12),
    "large": (1024, 16, 24, 24),
    "xlarge": (2048, 32, 24, 24),
}

VARIANTS = {
    "gelu": dict(qkv_bias=True, proj_bias=True, mlp_bias=True, norm_bias=True, act_layer="GELU", gated_mlp=False, qk_norm=False),
    "swiglu_nobias": dict(qkv_bias=False, proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU", gated_mlp=True, qk_norm=False),
    "swiglu_qknorm_nobias": dict(qkv_bias=False, proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU", gated_mlp=True, qk_norm=True),
}

_NAME = re.compile(r"^fm_(?P<size>[a-z]+)_(?P<e>\d+)e_(?P<d>\d+)d_(?P<variant>[a-z_]+)$")


def model_names() -> list[str]:
    return [f"fm_{s}_{e}e_{d}d_{v}" for s, (_, _, e, d) in SIZES.items() for v in VARIANTS]


DEFAULT_VARIANT = "swiglu_nobias"


def model_name(value: str) -> str:
    """What ``model=`` means in every command: an architecture, given as a factory name
    (``fm_base_12e_12d_swiglu_nobias``) or a size (``base`` = its ``swiglu_nobias`` factory name)."""
    if value in SIZES:
        _, _, e, d = SIZES[value]
        return f"fm_{value}_{e}e_{d}d_{DEFAULT_VARIANT}"
    m = _NAME.match(str(value))
    if not m or m["size"] not in SIZES or m["variant"] not in VARIANTS:
        raise ValueError(f"model={value!r} is not an architecture: give a size ({', '.join(SIZES)}) or a factory "
                         f"name (fm_<size>_<E>e_<D>d_<variant>, variants {', '.join(VARIANTS)}); weights are given "
                         "as checkpoint= (generate, oob) or init= (transfer, pretrain)")
    return str(value)


def config_for(name: str, **overrides) -> dict:
    """The FourM config (official metadata keys) for a factory name; overrides win (e.g. domains_in, image_size)."""
    m = _NAME.match(name)
    if not m or m["size"] not in SIZES or m["variant"] not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    dim, heads, _, _ = SIZES[m["size"]]
    return {"dim": dim, "num_heads": heads, "encoder_depth": int(m["e"]), "decoder_depth": int(m["d"]),
            "mlp_ratio": 4.0, **VARIANTS[m["variant"]], **overrides}


def domains(release: str) -> dict:
    """``domains_in`` / ``domains_out`` of an official release: "4m7" or "4m21" (the ``4m-{b,l,xl}_mod21`` configs:
    19 inputs, the 17 that are not input-only as outputs), sorted as the official training script sorts them."""
    from fourm import modalities as M

    names = {"4m7": M.MOD7, "4m21": M.MOD21}
    if release not in names:
        raise ValueError(f"unknown release {release!r}; known: {sorted(names)}")
    ins = sorted(names[release])
    return {"domains_in": ins, "domains_out": [m for m in ins if M.get(m).has_decoder]}


def create_model(name: str, release: str | None = None, **overrides) -> FourM:
    """Build a FourM by official name; e.g. ``create_model("fm_base_12e_12d_swiglu_nobias", release="4m21")`` (the
    release's domains; default the 4M-7 ones)."""
    return FourM.from_config(config_for(name, **({**domains(release), **overrides} if release else overrides)))


def transformer_parameters(model: FourM) -> int:
    """Parameters of the transformer proper (encoder/decoder blocks, norms, context projection), the figure papers quote."""
    return sum(p.numel() for n, p in model.named_parameters()
               if n.startswith(("encoder.", "decoder.", "encoder_norm", "decoder_norm", "decoder_proj_context")))


def checkpoint_by_default(model_name: str, device) -> bool:
    """Activation checkpointing's ``auto``: on for the large and xlarge sizes on a GPU, where activations, not
    weights, fill the memory."""
    return getattr(device, "type", str(device)) == "cuda" and any(f"_{s}_" in model_name for s in ("large", "xlarge"))
