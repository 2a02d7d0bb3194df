"""The 4M encoder on its own (FourMViT equivalent): what every transfer adapter builds on.

No CLS token; returns tokens after the final norm. Parameter names are those of the full model's encoder
(``encoder_embeddings.<mod>.*``, ``encoder.<i>.*``, ``encoder_norm.*``), so official and our checkpoints load
into it with no renaming.
"""
from __future__ import annotations

import torch
from torch import nn

from fourm import modalities as M
from fourm.models.blocks import Block, additive_mask, run_block
from fourm.models.fourm import ACTIVATIONS, CONFIG_DEFAULTS, encoder_embedding, norm_layer_for, with_vocab_sizes


class FourMEncoder(nn.Module):
    """ViT view of the 4M encoder over one or more input modalities (default RGB)."""

    def __init__(self, domains_in=("rgb@224",), dim=768, encoder_depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True,
                 proj_bias=True, mlp_bias=True, norm_bias=True, act_layer="GELU", gated_mlp=False, qk_norm=False,
                 image_size=224, patch_size=16, drop_path_rate=0.0, vocab_sizes=None, **_ignored):
        super().__init__()
        mods = with_vocab_sizes(M.check(list(domains_in), "domains_in"), vocab_sizes)
        self.config = dict(domains_in=list(domains_in), dim=dim, encoder_depth=encoder_depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias, mlp_bias=mlp_bias,
                           norm_bias=norm_bias, act_layer=act_layer, gated_mlp=gated_mlp, qk_norm=qk_norm,
                           image_size=image_size, patch_size=patch_size)
        if vocab_sizes:
            self.config["vocab_sizes"] = {k: v for k, v in vocab_sizes.items() if k in self.config["domains_in"]}
        self.modality_info = {m.name: m for m in mods}
        self.dim = self.embed_dim = dim
        self.patch_size = patch_size
        self.encoder_embeddings = nn.ModuleDict({m.name: encoder_embedding(m, dim, image_size, patch_size) for m in mods})
        norm_layer = norm_layer_for(norm_bias)
        dpr = [drop_path_rate * i / max(encoder_depth - 1, 1) for i in range(encoder_depth)]
        self.encoder = nn.ModuleList([
            Block(dim, num_heads, mlp_ratio, qkv_bias, proj_bias, mlp_bias, drop_path=dpr[i],
                  act_layer=ACTIVATIONS[act_layer], norm_layer=norm_layer, gated_mlp=gated_mlp, qk_norm=qk_norm)
            for i in range(encoder_depth)])
        self.encoder_norm = norm_layer(dim)
        # recompute each block's activations in backward instead of storing them (memory for L/XL, not numerics)
        self.checkpoint_blocks = False

    @classmethod
    def from_config(cls, config: dict, domains_in=("rgb@224",), **overrides) -> "FourMEncoder":
        cfg = {**CONFIG_DEFAULTS, **config, **overrides, "domains_in": list(domains_in)}
        return cls(**cfg)

    @property
    def depth(self) -> int:
        return len(self.encoder)

    def embed(self, inputs: torch.Tensor | dict) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed a batch: a tensor means RGB; a dict maps modality -> tensor (all tokens visible), concatenated."""
        if torch.is_tensor(inputs):
            inputs = {next(iter(self.encoder_embeddings)): inputs}
        parts, grid = [], None
        for mod, t in inputs.items():
            if mod not in self.encoder_embeddings:
                raise KeyError(f"encoder has no embedding for {mod!r}; it has {list(self.encoder_embeddings)}")
            d = self.encoder_embeddings[mod]({"tensor": t})
            parts.append(d["x"] + d["emb"])
            if grid is None and t.ndim == 4:
                grid = (t.shape[2] // self.patch_size, t.shape[3] // self.patch_size)
            elif grid is None and t.ndim == 3:
                grid = tuple(t.shape[1:3])
        return torch.cat(parts, dim=1), grid

    def forward_features(self, inputs, out_indices=None, mask: torch.Tensor | None = None):
        """Tokens after the final norm; with ``out_indices`` also the outputs of those blocks (before the norm)."""
        x, grid = self.embed(inputs)
        attn_mask = additive_mask(mask.unsqueeze(1), x.dtype) if mask is not None else None
        feats = []
        for i, blk in enumerate(self.encoder):
            x = run_block(blk, self.checkpoint_blocks, x, attn_mask)
            if out_indices is not None and i in out_indices:
                feats.append(x)
        x = self.encoder_norm(x)
        return (x, feats, grid) if out_indices is not None else x

    def forward(self, inputs, mask=None) -> torch.Tensor:
        return self.forward_features(inputs, mask=mask)

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise LR decay: embeddings 0, block i -> i+1, final norm -> depth+1."""
        if name.startswith("encoder_embeddings"):
            return 0
        if name.startswith("encoder."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1
