"""FourM: the 4M encoder-decoder over many modalities (the official architecture, SDPA attention)."""
from __future__ import annotations

import dataclasses
import random as _random
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fourm import modalities as M
from fourm.models.blocks import Block, DecoderBlock, LayerNorm, additive_mask, run_block
from fourm.models.embeddings import (
    ImageEncoderEmbedding,
    ImageTokenDecoderEmbedding,
    ImageTokenEncoderEmbedding,
    SequenceDecoderEmbedding,
    SequenceEmbEncoderEmbedding,
    SequenceEncoderEmbedding,
    init_linear_,
)

ACTIVATIONS = {"GELU": nn.GELU, "SiLU": nn.SiLU, "ReLU": nn.ReLU}

# Config keys as stored in the official checkpoints' safetensors metadata, with the official defaults.
CONFIG_DEFAULTS = {
    "dim": 768,
    "encoder_depth": 12,
    "decoder_depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "norm_bias": True,
    "act_layer": "GELU",
    "gated_mlp": False,
    "qk_norm": False,
    "domains_in": list(M.MOD7),
    "domains_out": [m for m in M.MOD7 if M.get(m).has_decoder],
    "image_size": 224,
    "patch_size": 16,
    "decoder_causal_mask": False,
    "decoder_sep_mask": True,
    "share_modality_embeddings": True,
    "drop_path_rate_encoder": 0.0,
    "drop_path_rate_decoder": 0.0,
    # Not an official key: {modality: vocab} for token modalities whose tokenizer has another vocabulary than the
    # registry's official one (e.g. a 256-code demo VQ-VAE). Written to the metadata only when set.
    "vocab_sizes": None,
}


def with_vocab_sizes(mods: list[M.Modality], vocab_sizes: dict | None) -> list[M.Modality]:
    """The modalities with their vocabulary replaced where ``vocab_sizes`` says so (checked: token modalities only)."""
    if not vocab_sizes:
        return mods
    by_name = {m.name: m for m in mods}
    bad = {k: v for k, v in vocab_sizes.items() if k in by_name and (by_name[k].kind == "image" or not isinstance(v, int) or v < 1)}
    if bad:
        raise ValueError(f"vocab_sizes {bad}: only token modalities take a vocabulary size, and it must be a positive int")
    return [dataclasses.replace(m, vocab_size=vocab_sizes[m.name]) if m.name in vocab_sizes else m for m in mods]


def token_patch_size(mod: M.Modality, image_size: int, patch_size: int) -> int:
    """Pixels per token of a token modality in a model of ``image_size`` / ``patch_size``: the registry's grid is the
    official 224 px one (patch 16), so a modality keeps its grid relative to the model's (patch 14 -> 16 x 16 at
    14 x 14, global tokens at patch 56 -> 4 x 4)."""
    model_grid = image_size // patch_size
    if (model_grid * 16) % mod.patch_size or image_size % (model_grid * 16 // mod.patch_size):
        raise ValueError(f"modality {mod.name!r} (patch {mod.patch_size} at 224 px) has no whole grid in a model of "
                         f"{image_size} px / patch {patch_size}; pick an image size that is a multiple of its grid")
    return image_size // (model_grid * 16 // mod.patch_size)


def encoder_embedding(mod: M.Modality, dim: int, image_size: int, patch_size: int) -> nn.Module:
    if mod.kind == "image":
        return ImageEncoderEmbedding(dim, image_size, patch_size, mod.num_channels)
    if mod.kind == "image_tokens":
        return ImageTokenEncoderEmbedding(dim, mod.vocab_size, image_size, token_patch_size(mod, image_size, patch_size),
                                          learned_pos=mod.pos_emb == "learned")
    if mod.kind == "embedding_sequence":
        return SequenceEmbEncoderEmbedding(dim, mod.embedding_dim, mod.max_length)
    return SequenceEncoderEmbedding(dim, mod.vocab_size, mod.max_length, mod.pad_id)


def decoder_embedding(mod: M.Modality, dim: int, image_size: int, patch_size: int) -> nn.Module:
    if mod.kind == "image_tokens":
        return ImageTokenDecoderEmbedding(dim, mod.vocab_size, image_size, token_patch_size(mod, image_size, patch_size),
                                          learned_pos=mod.pos_emb == "learned")
    if mod.kind == "sequence":
        return SequenceDecoderEmbedding(dim, mod.vocab_size, mod.max_length, mod.pad_id)
    raise ValueError(f"modality {mod.name!r} ({mod.kind}) is input-only and cannot be in domains_out; pick a tokenized variant")


def norm_layer_for(norm_bias: bool):
    return partial(LayerNorm, eps=1e-6, bias=norm_bias)


class FourM(nn.Module):
    """The 4M model. Build from a config dict (official metadata keys) with :func:`FourM.from_config`."""

    def __init__(self, domains_in, domains_out, dim=768, encoder_depth=12, decoder_depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=True, proj_bias=True, mlp_bias=True, norm_bias=True, act_layer="GELU",
                 gated_mlp=False, qk_norm=False, image_size=224, patch_size=16, decoder_causal_mask=False,
                 decoder_sep_mask=True, share_modality_embeddings=True, drop_path_rate_encoder=0.0,
                 drop_path_rate_decoder=0.0, vocab_sizes=None):
        super().__init__()
        self.config = dict(
            domains_in=list(domains_in), domains_out=list(domains_out), dim=dim, encoder_depth=encoder_depth,
            decoder_depth=decoder_depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            proj_bias=proj_bias, mlp_bias=mlp_bias, norm_bias=norm_bias, act_layer=act_layer, gated_mlp=gated_mlp,
            qk_norm=qk_norm, image_size=image_size, patch_size=patch_size, decoder_causal_mask=decoder_causal_mask,
            decoder_sep_mask=decoder_sep_mask, share_modality_embeddings=share_modality_embeddings,
            drop_path_rate_encoder=drop_path_rate_encoder, drop_path_rate_decoder=drop_path_rate_decoder,
        )
        mods_in = with_vocab_sizes(M.check(list(domains_in), "domains_in"), vocab_sizes)
        mods_out = with_vocab_sizes(M.check(list(domains_out), "domains_out"), vocab_sizes)
        if vocab_sizes:
            unknown = sorted(set(vocab_sizes) - {m.name for m in mods_in + mods_out})
            if unknown:
                raise ValueError(f"vocab_sizes names {unknown}, which are not in domains_in/domains_out")
            self.config["vocab_sizes"] = dict(vocab_sizes)
        if act_layer not in ACTIVATIONS:
            raise ValueError(f"act_layer {act_layer!r} is not one of {sorted(ACTIVATIONS)}")
        # what this model sees of each modality: its image and patch size (e.g. rgb@224 at 112 px in patches of 8)
        self.modality_info = {m.name: self._as_seen(m, image_size, patch_size) for m in mods_in + mods_out}
        self.dim = dim
        self.decoder_causal_mask = decoder_causal_mask
        self.decoder_sep_mask = decoder_sep_mask

        self.encoder_embeddings = nn.ModuleDict(
            {m.name: encoder_embedding(m, dim, image_size, patch_size) for m in mods_in})
        self.decoder_embeddings = nn.ModuleDict(
            {m.name: decoder_embedding(m, dim, image_size, patch_size) for m in mods_out})

        norm_layer = norm_layer_for(norm_bias)
        act = ACTIVATIONS[act_layer]
        kw = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias, mlp_bias=mlp_bias,
                  act_layer=act, norm_layer=norm_layer, gated_mlp=gated_mlp, qk_norm=qk_norm)
        dpr_e = [drop_path_rate_encoder * i / max(encoder_depth - 1, 1) for i in range(encoder_depth)]
        dpr_d = [drop_path_rate_decoder * i / max(decoder_depth - 1, 1) for i in range(decoder_depth)]
        self.encoder = nn.ModuleList([Block(dim, drop_path=dpr_e[i], **kw) for i in range(encoder_depth)])
        self.encoder_norm = norm_layer(dim)
        self.decoder_proj_context = nn.Linear(dim, dim)  # has a bias even in the no-bias variants (as official)
        self.decoder = nn.ModuleList([DecoderBlock(dim, drop_path=dpr_d[i], **kw) for i in range(decoder_depth)])
        self.decoder_norm = norm_layer(dim)
        # recompute each block's activations in backward instead of storing them (memory for L/XL, not numerics)
        self.checkpoint_blocks = False
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

        self.init_weights()
        if share_modality_embeddings:
            for name, emb in self.decoder_embeddings.items():
                if name in self.encoder_embeddings:
                    emb.mod_emb = self.encoder_embeddings[name].mod_emb

    @staticmethod
    def _as_seen(m: M.Modality, image_size: int, patch_size: int) -> M.Modality:
        if m.kind == "image":
            return dataclasses.replace(m, input_size=image_size, patch_size=patch_size)
        if m.kind == "image_tokens":
            return dataclasses.replace(m, input_size=image_size, patch_size=token_patch_size(m, image_size, patch_size))
        return m

    @classmethod
    def from_config(cls, config: dict) -> "FourM":
        unknown = sorted(set(config) - set(CONFIG_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown FourM config keys {unknown}; known: {sorted(CONFIG_DEFAULTS)}")
        return cls(**{**CONFIG_DEFAULTS, **config})

    def init_weights(self) -> None:
        init_linear_(self)
        nn.init.normal_(self.mask_token, std=0.02)
        for emb in list(self.encoder_embeddings.values()) + list(self.decoder_embeddings.values()):
            nn.init.trunc_normal_(emb.mod_emb, std=0.02)

    # --- encoder -----------------------------------------------------------------------------------
    @staticmethod
    def _select(n: int, unused: torch.Tensor) -> torch.Tensor:
        """Indices of the first n used positions per sample, in order (then unused ones): a stable sort on the mask."""
        arange = torch.arange(unused.shape[1], device=unused.device).unsqueeze(0) * 1e-6
        return torch.argsort(unused + arange, dim=1)[:, :n]

    @staticmethod
    def _embed_kept(ids_keep: torch.Tensor, parts: list) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``emb`` ``[B, n, D]`` at ``ids_keep``, positions in the concatenation of ``parts``.

        ``parts``: per modality, in concatenation order, ``(length, select)`` where ``select(idx, rows)`` embeds that
        modality's positions ``idx`` ``[K]`` of the samples ``rows`` ``[K]`` (``x`` may be a ``[1, 1, D]`` token).
        Only the kept tokens are embedded, each by its own modality: building every modality's ``[B, N, D]`` tensors
        first (the official code's way) and gathering from them cost a small model more than its transformer blocks on
        CPU, and embedding all kept positions with every modality and picking with ``where`` made a nano step 8%
        slower. The values are the same (the gradients up to summation order).
        """
        B, n = ids_keep.shape
        xs, es, where = [], [], []
        offset = 0
        for length, select in parts:
            local = ids_keep - offset
            offset += length
            rows, cols = ((local >= 0) & (local < length)).nonzero(as_tuple=True)
            x, e = select(local[rows, cols], rows)
            xs.append(x.reshape(-1, e.shape[-1]).expand(e.shape))
            es.append(e)
            where.append(rows * n + cols)
        # the parts' entries cover each of the B * n kept positions once: put them back in (sample, position) order
        order = torch.argsort(torch.cat(where))
        return torch.cat(xs)[order].view(B, n, -1), torch.cat(es)[order].view(B, n, -1)

    def forward_mask_encoder(self, mod_dict: dict, num_encoder_tokens: int):
        """The first ``num_encoder_tokens`` input tokens per sample (modality order, then position), embedded."""
        mods = [m for m in mod_dict if m in self.encoder_embeddings]
        masks = [mod_dict[m]["input_mask"] for m in mods]
        mask_all = torch.cat(masks, 1)
        mod_all = torch.cat([torch.full_like(mk, self.modality_info[m].id, dtype=torch.int16) for m, mk in zip(mods, masks)], 1)
        ids_keep = self._select(num_encoder_tokens, mask_all)
        mask, mod_mask = torch.gather(mask_all, 1, ids_keep), torch.gather(mod_all, 1, ids_keep)
        tokens, emb = self._embed_kept(
            ids_keep, [(mk.shape[1], partial(self.encoder_embeddings[m].select, mod_dict[m])) for m, mk in zip(mods, masks)])
        tokens = tokens.masked_fill(mask.unsqueeze(-1), 0.0)
        emb = emb.masked_fill(mask.unsqueeze(-1), 0.0)
        mod_mask = mod_mask.masked_fill(mask, -1)
        return tokens, emb, mask.unsqueeze(1), mod_mask, ids_keep

    def forward_encoder(self, x: torch.Tensor, encoder_mask: torch.Tensor | None) -> torch.Tensor:
        attn_mask = additive_mask(encoder_mask, x.dtype)
        for blk in self.encoder:
            x = run_block(blk, self.checkpoint_blocks, x, attn_mask)
        return self.encoder_norm(x)

    # --- decoder -----------------------------------------------------------------------------------
    def decoder_order(self, mods, rng=_random) -> list[str]:
        """The decoder's modality order, shuffled with Python's `random` as the official code does."""
        return rng.sample(tuple(mods), len(mods))

    def adapt_decoder_attention_mask(self, decoder_attention_mask: torch.Tensor, mod_mask: torch.Tensor) -> torch.Tensor:
        """Compressed 4M decoder mask -> full [B, N, N] boolean mask (True = masked).

        Each position holds how many tokens its group adds: [4,0,0,0] lets the group attend to all four, [1,1,1,1] is
        causal. With the separation mask, tokens attend only within their own modality.
        """
        B, N = decoder_attention_mask.shape
        arange = torch.arange(N, device=decoder_attention_mask.device)
        if self.decoder_causal_mask:
            mask = (arange[None, :] > arange[:, None]).expand(B, N, N)
        else:
            cumsum = torch.cumsum(decoder_attention_mask, dim=1)
            mask = arange.view(1, 1, N) >= cumsum.view(B, N, 1)
        if self.decoder_sep_mask:
            mask = mask | (mod_mask.unsqueeze(1) != mod_mask.unsqueeze(2))
        return mask

    def forward_mask_decoder(self, mod_dict: dict, num_decoder_tokens: int, rng=_random):
        """The first ``num_decoder_tokens`` target queries per sample, in a shuffled modality order, embedded.

        Sequences are teacher-forced: query j holds token j and predicts token j+1; it is valid only if both are
        targets."""
        order = self.decoder_order([m for m in mod_dict if m in self.decoder_embeddings], rng)
        masks, targets, attn, mods, parts = [], [], [], [], []
        for mod in order:
            d, emb_layer = mod_dict[mod], self.decoder_embeddings[mod]
            ids = d["tensor"]
            if self.modality_info[mod].kind == "sequence":
                masks.append(d["target_mask"][:, 1:] | d["target_mask"][:, :-1])
                targets.append(ids[:, 1:])
                attn.append(d["decoder_attention_mask"][:, :-1])
                select = partial(emb_layer.select, d)
            else:
                ids = ids.reshape(ids.shape[0], -1)
                masks.append(d["target_mask"])
                targets.append(ids)
                attn.append(d["decoder_attention_mask"])
                select = partial(self._mask_token_queries, emb_layer, d)
            mods.append(torch.full_like(targets[-1], self.modality_info[mod].id, dtype=torch.int16))
            parts.append((masks[-1].shape[1], select))
        mask_all, target_all, attn_all, mod_all = (torch.cat(t, 1) for t in (masks, targets, attn, mods))
        ids_keep = self._select(num_decoder_tokens, mask_all)
        mask, target_ids, attn, mod_mask = (torch.gather(t, 1, ids_keep) for t in (mask_all, target_all, attn_all, mod_all))
        tokens, emb = self._embed_kept(ids_keep, parts)
        tokens = tokens.masked_fill(mask.unsqueeze(-1), 0.0)
        emb = emb.masked_fill(mask.unsqueeze(-1), 0.0)
        target_ids = target_ids.masked_fill(mask, 0)
        attn_mask = self.adapt_decoder_attention_mask(attn, mod_mask)
        mod_mask = mod_mask.masked_fill(mask, -1)
        return dict(tokens=tokens, emb=emb, mask=mask.unsqueeze(1), target_ids=target_ids, attn_mask=attn_mask,
                    mod_mask=mod_mask, ids_keep=ids_keep, order=order)

    def _mask_token_queries(self, emb_layer, d: dict, idx: torch.Tensor, rows: torch.Tensor | None = None):
        return self.mask_token, emb_layer.select(d, idx, rows)[1]

    def forward_decoder(self, y, context, encoder_mask, attn_mask):
        sa = additive_mask(attn_mask, y.dtype)
        xa = additive_mask(encoder_mask, y.dtype)
        for blk in self.decoder:
            y = run_block(blk, self.checkpoint_blocks, y, context, sa, xa)
        return self.decoder_norm(y)

    # --- losses ------------------------------------------------------------------------------------
    def forward_logits(self, y, decoder_mod_dict, mod_mask) -> dict:
        """Per-modality logits for the decoder rows of that modality, row-major over (batch, position)."""
        out = {}
        for mod in decoder_mod_dict:
            sel = mod_mask == self.modality_info[mod].id
            out[mod] = self.decoder_embeddings[mod].forward_logits(y[sel])
        return out

    def losses(self, y, target_ids, decoder_mod_dict, mod_mask, loss_type="mod", count_reduce=None):
        """'mod': mean of per-modality mean losses; 'tok': mean over all target tokens.

        ``count_reduce`` (data parallel): sums per-modality token counts over ranks and returns ``(counts, world_size)``;
        each rank then normalises by the *global* counts (times world size, as DDP averages gradients), so the
        gradient and the rank-averaged loss equal those of one process on the whole global batch.
        """
        mods = list(decoder_mod_dict)
        sels = [mod_mask == self.modality_info[m].id for m in mods]
        local = torch.stack([s.sum() for s in sels]).to(y.dtype)
        counts, world = (local, 1) if count_reduce is None else count_reduce(local.detach())
        mod_loss, ce_sums = {}, []
        for j, (mod, sel) in enumerate(zip(mods, sels)):
            logits = self.decoder_embeddings[mod].forward_logits(y[sel])
            ce_sum = F.cross_entropy(logits.float(), target_ids[sel].long(), reduction="sum") if logits.numel() else 0.0 * y.sum()
            ce_sums.append(ce_sum)
            # an absent modality contributes 0, as in the official code (and keeps the graph connected for DDP)
            mod_loss[mod] = (ce_sum * world / counts[j].clamp(min=1)).reshape(1) if logits.numel() else y.new_zeros(1) + ce_sum
        if loss_type in ("mod", "modality"):
            loss = sum(v.reshape(()) for v in mod_loss.values()) / len(mod_loss)
        elif loss_type in ("tok", "token"):
            loss = sum(ce_sums) * world / counts.sum().clamp(min=1)
        else:
            raise ValueError(f"loss_type must be 'mod' or 'tok', got {loss_type!r}")
        return loss, {m: v.reshape(()) for m, v in mod_loss.items()}

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, mod_dict: dict, num_encoder_tokens: int, num_decoder_tokens: int, loss_type: str = "mod",
                return_logits: bool = False, return_all: bool = False, rng=_random, count_reduce=None):
        """Masked multimodal forward on the official batch format.

        Returns ``(loss, mod_loss)``; with ``return_logits`` the per-modality logits dict instead; with ``return_all``
        a dict holding every intermediate (encoder/decoder tokens, masks, outputs, logits, losses).
        """
        if not any(m in self.encoder_embeddings for m in mod_dict):
            raise ValueError(f"no input modality of this model in the batch {list(mod_dict)}; model inputs: {list(self.encoder_embeddings)}")
        dec_dict = dict.fromkeys(m for m in mod_dict if m in self.decoder_embeddings)  # the target modalities, in order
        enc_tokens, enc_emb, enc_mask, enc_mod_mask, enc_ids = self.forward_mask_encoder(mod_dict, num_encoder_tokens)
        dec = self.forward_mask_decoder(mod_dict, num_decoder_tokens, rng)

        x = self.forward_encoder(enc_tokens + enc_emb, enc_mask)
        context = self.decoder_proj_context(x) + enc_emb
        y = self.forward_decoder(dec["tokens"] + dec["emb"], context, enc_mask, dec["attn_mask"])

        if return_logits:
            return self.forward_logits(y, dec_dict, dec["mod_mask"])
        loss, mod_loss = self.losses(y, dec["target_ids"], dec_dict, dec["mod_mask"], loss_type, count_reduce)
        if return_all:
            return dict(loss=loss, mod_loss=mod_loss, enc_tokens=enc_tokens, enc_emb=enc_emb, enc_mask=enc_mask,
                        enc_mod_mask=enc_mod_mask, enc_ids_keep=enc_ids, enc_output=x, dec_output=y,
                        logits=self.forward_logits(y, dec_dict, dec["mod_mask"]), **{f"dec_{k}": v for k, v in dec.items()})
        return loss, mod_loss

    def encode(self, mod_dict: dict, num_encoder_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder only: (tokens after the final norm, boolean pad mask [B, N])."""
        tokens, emb, mask, _, _ = self.forward_mask_encoder(mod_dict, num_encoder_tokens)
        return self.forward_encoder(tokens + emb, mask), mask.squeeze(1)

    def weight_decay_exclusions(self) -> set[str]:
        """Parameter names 4M trains without weight decay (position/modality embeddings, mask token, norms, biases)."""
        skip = set()
        for name, p in self.named_parameters():
            if p.ndim <= 1 or name.endswith(".bias") or "mod_emb" in name or name == "mask_token" or "pos_emb" in name:
                skip.add(name)
        return skip
