"""The shared encoder adapter: build the 4M encoder for a transfer task and give it layer-wise LR decay.

Every task (classification, segmentation, depth, detection, RGB-D) starts from :func:`build_encoder` and trains with
:func:`layer_decay_param_groups`, so "what init" and "how the encoder is optimised" mean the same thing everywhere.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fourm.models import config_for, load_encoder
from fourm.models.encoder import FourMEncoder

NO_WEIGHT_DECAY = ("pos_emb", "mod_emb", "mask_token", "cls_token")


def build_encoder(init: str, model: str = "fm_base_12e_12d_swiglu_nobias", modalities=("rgb@224",),
                  image_size: int | None = None, drop_path_rate: float = 0.0) -> FourMEncoder:
    """The encoder from a checkpoint path (official or ours; its config wins) or ``init="random"`` (``model`` sets the size).

    ``image_size`` changes the position grid (sin-cos, resized bicubically for loaded weights' grid-free buffers).
    """
    overrides = {"drop_path_rate": drop_path_rate}
    if image_size is not None:
        overrides["image_size"] = image_size
    if init == "random":
        return load_encoder("random", modality=list(modalities), config=config_for(model), **overrides)
    if not Path(init).exists() and "/" not in str(init):
        raise FileNotFoundError(f"transfer init {init!r}: no such checkpoint; pass a .safetensors path, a hub id, or 'random'")
    return load_encoder(init, modality=list(modalities), **overrides)


def protocol_encoder_args(config: dict) -> dict:
    """What a transfer config's protocol asks of the encoder: ``frozen`` (``linear``) and ``lora`` (``lora``: its
    section of the config), as the backbones' keyword arguments."""
    protocol = config["transfer"].get("protocol", "finetune")
    return {"frozen": protocol == "linear", "lora": config.get("lora") if protocol == "lora" else None}


def adapt_encoder(encoder: FourMEncoder, frozen: bool = False, lora: dict | None = None) -> FourMEncoder:
    """Apply a protocol to a built encoder: ``frozen`` turns its gradients off and puts it in eval mode (keep it
    there in the owner's ``train()``); ``lora`` freezes its weights and adds adapters (:func:`transfer.lora.add_lora`)."""
    if frozen:
        encoder.requires_grad_(False)
        encoder.eval()
    if lora:
        from transfer.lora import add_lora

        add_lora(encoder, **lora)
    return encoder


def encoder_config(init: str, model: str = "fm_base_12e_12d_swiglu_nobias") -> dict:
    """The 4M config of the encoder :func:`build_encoder` gives for ``init`` (a checkpoint's own config wins over
    ``model``), read from the safetensors metadata without loading weights: what heads need (``dim``, ``patch_size``)."""
    if str(init) == "random":
        return config_for(model)
    from safetensors import safe_open

    from fourm.models.checkpoint import parse_metadata

    if not Path(init).is_file():
        raise FileNotFoundError(f"transfer.init {init!r}: no such checkpoint; pass a .safetensors path or 'random'")
    with safe_open(str(init), "pt") as f:
        meta = parse_metadata(f.metadata() or {})
    if "dim" not in meta:
        raise ValueError(f"transfer.init {init}: no 4M config (dim) in its safetensors metadata")
    return meta


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer decay: embeddings 0, encoder block i -> i+1, everything else (norm, heads) last."""
    name = name.split("backbone.", 1)[-1].split("encoder_model.", 1)[-1]
    if name.startswith("encoder_embeddings"):
        return 0
    if name.startswith("encoder."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float, num_layers: int,
                             no_weight_decay: tuple[str, ...] = NO_WEIGHT_DECAY) -> list[dict]:
    """Param groups with lr * layer_decay**(num_layers + 1 - layer_id); no decay on 1-D params and embeddings."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, num_layers)
        no_wd = p.ndim == 1 or name.endswith(".bias") or any(k in name for k in no_weight_decay)
        key = (lid, no_wd)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid)
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_wd else weight_decay, "layer_id": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
