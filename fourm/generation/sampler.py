"""Any-to-any generation with a FourM: MaskGIT, ROAR and autoregressive decoding, guidance, chaining.

``GenerationSampler(model).generate(mod_dict, schedule, ...)`` has the official API and produces the official
sampler's tokens (tested for identity on tokens recorded from it). Two things may differ, neither changing a token:
autoregressive decoding keeps a key/value cache instead of recomputing the whole prefix for every token, and a guided
step can run its conditional and unconditional passes as one batch (``batch_guidance``; by default on CUDA only: the
unconditional pass sees fewer tokens, and on CPU padding it to the conditional one costs more than a second pass
saves, see docs/performance.md). ``kv_cache=False, batch_guidance=False`` is the official computation.

Exactness needs the official RNG use: with a seed, step ``i`` of the schedule reseeds with ``seed + i`` once before
its sampling (ROAR draws its order from that seed first); temperature 0 is argmax with every confidence 1, so MaskGIT
then keeps ``torch.topk``'s choice among ties; one ``torch.multinomial`` call samples all rows of a step.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fourm.data.text import merge_spans
from fourm.generation.modality_dicts import empty_img_modality, empty_seq_emb_modality, empty_seq_modality, kind_of, sentinel_ids
from fourm.generation.schedules import ScheduleError, check_cfg_scale
from fourm.models.blocks import additive_mask


class GenerationSampler(nn.Module):
    """Generates the targets of a schedule, step by step, from whatever ``mod_dict`` holds as inputs."""

    def __init__(self, model, kv_cache: bool = True, batch_guidance: bool | None = None):
        super().__init__()
        self.model = model
        self.kv_cache = kv_cache
        self.batch_guidance = batch_guidance

    # --- sampling (official semantics) ---------------------------------------------------------------------
    @staticmethod
    def top_k_top_p_filtering(logits: torch.Tensor, top_k=0.0, top_p=0.0) -> torch.Tensor:
        """Set to -inf (in place) what top-k (an int count, or a float share of the vocabulary) and top-p drop."""
        if top_k > 0.0:
            if isinstance(top_k, int):
                k = min(top_k, logits.shape[-1])
            elif isinstance(top_k, float):
                k = min(int(top_k * logits.shape[-1]), logits.shape[-1])
            else:
                raise ValueError(f"top_k must be an int count or a float share of the vocabulary, got {top_k!r}")
            logits[logits < torch.topk(logits, k)[0][..., -1, None]] = float("-inf")
        if top_p > 0.0:
            sorted_logits, sorted_indices = torch.sort(logits, dim=1, descending=True)
            cum_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
            remove = cum_probs > top_p
            remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold too
            remove[..., 0] = 0
            logits[torch.gather(remove, -1, torch.argsort(sorted_indices, dim=-1))] = float("-inf")
        return logits

    def sample_tokens(self, logits: torch.Tensor, temperature=1.0, top_k=0.0, top_p=0.0):
        """``[R, V]`` logits -> (samples ``[R]``, their probabilities ``[R]``); temperature 0 is argmax (prob 1)."""
        if np.isclose(temperature, 0, atol=1e-10):
            samples = torch.argmax(logits, dim=-1)
            return samples, torch.ones_like(samples, dtype=torch.float32)
        probs = F.softmax(self.top_k_top_p_filtering(logits, top_k, top_p) / temperature, dim=-1)
        samples = torch.multinomial(probs, 1)[:, 0]
        return samples, probs[torch.arange(len(samples)), samples]

    def sample_tokens_batched(self, logits: torch.Tensor, temperature=1.0, top_k=0.0, top_p=0.0):
        if logits.ndim > 2:
            B, N = logits.shape[:2]
            samples, probs = self.sample_tokens(logits.reshape(B * N, -1), temperature, top_k, top_p)
            return samples.reshape(B, N), probs.reshape(B, N)
        return self.sample_tokens(logits, temperature, top_k, top_p)

    # --- model passes --------------------------------------------------------------------------------------
    def _encode(self, mod_dict: dict):
        """Encoder over every visible input token -> per decoder block the context's (k, v), and the context mask."""
        m = self.model
        mods = {k: d for k, d in mod_dict.items() if k in m.encoder_embeddings}
        B = next(iter(mods.values()))["input_mask"].shape[0]
        n = int((~torch.cat([d["input_mask"] for d in mods.values()], 1)).sum(1).max())
        if n == 0:  # nothing visible (an unconditional pass): an empty context, as the official code has
            context = torch.zeros(B, 0, m.dim)
            mask = torch.zeros(B, 1, 0, dtype=torch.bool)
        else:
            tokens, emb, mask, _, _ = m.forward_mask_encoder(mods, n)
            context = m.decoder_proj_context(m.forward_encoder(tokens + emb, mask)) + emb
        kv = []
        for blk in m.decoder:
            ca = blk.cross_attn
            k, v = ca.kv(blk.context_norm(context)).reshape(B, -1, 2, ca.num_heads, ca.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            kv.append((ca.k_norm(k) if ca.qk_norm else k, v))
        return kv, mask

    def _decode(self, y, ctx, sa_mask=None, cache=None):
        """The decoder blocks on queries ``y`` (the official DecoderBlock computation).

        ``ctx``: (per-block context (k, v), context mask). ``cache``: per-block self-attention (k, v) of the tokens
        before ``y``, extended in place (then ``y`` attends to them and itself, no mask needed). A row with no visible
        context token gets no cross-attention, as an empty context gives."""
        kv, enc_mask = ctx
        xa = additive_mask(enc_mask, y.dtype)
        empty = enc_mask.all(-1).view(-1, 1, 1, 1) if enc_mask.shape[-1] else None
        sa_add = additive_mask(sa_mask, y.dtype)
        B, N, C = y.shape
        for i, blk in enumerate(self.model.decoder):
            sa = blk.self_attn
            q, k, v = sa.qkv(blk.norm1(y)).reshape(B, N, 3, sa.num_heads, sa.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            if sa.qk_norm:
                q, k = sa.q_norm(q), sa.k_norm(k)
            if cache is not None:
                if cache[i] is not None:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                cache[i] = (k, v)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=sa_add)
            y = y + sa.proj(a.transpose(1, 2).reshape(B, N, C))
            ca = blk.cross_attn
            q = ca.q(blk.query_norm(y)).reshape(B, N, ca.num_heads, ca.head_dim).transpose(1, 2)
            if ca.qk_norm:
                q = ca.q_norm(q)
            a = F.scaled_dot_product_attention(q, kv[i][0], kv[i][1], attn_mask=xa)
            if empty is not None and empty.any():
                a = a.masked_fill(empty, 0.0)
            y = y + ca.proj(a.transpose(1, 2).reshape(B, N, C))
            y = y + blk.mlp(blk.norm2(y))
        return self.model.decoder_norm(y)

    def _logits(self, y: torch.Tensor, target: str) -> torch.Tensor:
        B, N, D = y.shape
        return self.model.decoder_embeddings[target].forward_logits(y.reshape(B * N, D)).reshape(B, N, -1)

    def _contexts(self, dicts: list[dict]):
        """One encoder pass per dict, or one for all of them stacked along the batch (``batch_guidance``)."""
        batch = self.batch_guidance
        if batch is None:
            batch = self.model.mask_token.device.type == "cuda"
        if len(dicts) == 1 or not batch:
            return [self._encode(d) for d in dicts]
        return [self._encode(_stack(dicts))]

    def _run(self, contexts, y, n_dicts: int, sa_mask=None, caches=None):
        """Decoder on ``y`` (one dict's queries) under each context; -> a list of ``n_dicts`` outputs."""
        if len(contexts) == 1:
            reps = n_dicts
            yy = y.repeat(reps, 1, 1) if reps > 1 else y
            m = sa_mask.repeat(reps, 1, 1) if (sa_mask is not None and reps > 1) else sa_mask
            out = self._decode(yy, contexts[0], m, caches[0] if caches else None)
            return list(out.chunk(reps)) if reps > 1 else [out]
        return [self._decode(y, c, sa_mask, caches[j] if caches else None) for j, c in enumerate(contexts)]

    @staticmethod
    def _combine(logits: list[torch.Tensor], weights) -> torch.Tensor:
        """Guidance: ``logits`` is [main] or [cond, uncond] (cfg scale) or [uncond, cond_1, ...] (weights)."""
        if weights is None:
            return logits[0]
        if isinstance(weights, float):
            cond, uncond = logits
            return uncond + (cond - uncond) * weights
        uncond, conds = logits[0], logits[1:]
        out = uncond
        for w, c in zip(weights, conds):
            out = out + (c - uncond) * w
        return out

    # --- steps ---------------------------------------------------------------------------------------------
    def _grid_step(self, dicts, weights, target, scheme, num_select, temp, top_k, top_p, seed):
        d = dicts[0][target]
        if seed is not None:
            torch.manual_seed(seed)
        tmask = d["target_mask"]
        B, L = tmask.shape
        n = int((~tmask).sum(1).max())
        if scheme == "roar":
            order = torch.rand(L, device=tmask.device).unsqueeze(0) * 1e-6
            pos = torch.argsort(tmask + order, dim=1)[:, : min(num_select, n)]
        else:
            order = torch.arange(L, device=tmask.device).unsqueeze(0) * 1e-6
            pos = torch.argsort(tmask + order, dim=1)[:, :n]
        emb_layer = self.model.decoder_embeddings[target]
        y = self.model.mask_token + emb_layer.select(d, pos)[1]
        contexts = self._contexts(dicts)
        logits = self._combine([self._logits(o, target) for o in self._run(contexts, y, len(dicts))], weights)
        samples, probs = self.sample_tokens_batched(logits, temp, top_k=top_k, top_p=top_p)
        if scheme == "maskgit":
            keep = torch.topk(probs, num_select, dim=1)[1]
            pos, samples = torch.gather(pos, 1, keep), torch.gather(samples, 1, keep)
        rows = torch.arange(B).unsqueeze(1)
        for md in dicts:
            t = md[target]
            t["tensor"] = t["tensor"].clone()
            t["tensor"].view(B, -1)[rows, pos] = samples.to(t["tensor"].dtype)
            t["input_mask"][rows, pos] = False
            t["target_mask"][rows, pos] = True

    def _ar_step(self, dicts, weights, target, temp, top_k, top_p, text_tokenizer, seed):
        d = dicts[0][target]
        if seed is not None:
            torch.manual_seed(seed)
        tmask = d["target_mask"]
        B, L = tmask.shape
        n = int((~tmask).sum(1).max())
        pos = torch.argsort(tmask + torch.arange(L).unsqueeze(0) * 1e-6, dim=1)[:, :n]
        ids = torch.gather(d["tensor"], 1, pos)
        emb_layer = self.model.decoder_embeddings[target]
        emb = emb_layer.forward_embed(d)["emb"]
        dec_emb = torch.gather(emb, 1, pos.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))
        eos = ids[0][~torch.gather(tmask, 1, pos)[0]][-1]  # the target's last token ([S_2] for an empty target)
        out = ids[:, :1]
        y_emb = dec_emb[:, : self.model.modality_info[target]["max_tokens"]]
        contexts = self._contexts(dicts)
        caches = [[None] * len(self.model.decoder) for _ in contexts] if self.kv_cache else None
        if not (out == eos).any(-1).all():
            for i in range(y_emb.shape[1]):
                cur = out.shape[1]
                if self.kv_cache:
                    y = emb_layer.token_emb(out[:, -1:]) + y_emb[:, cur - 1: cur]
                    outs = self._run(contexts, y, len(dicts), None, caches)
                else:
                    y = emb_layer.token_emb(out) + y_emb[:, :cur]
                    causal = torch.ones(cur, cur, dtype=torch.bool).triu(1).expand(B, cur, cur)
                    outs = self._run(contexts, y, len(dicts), causal)
                last = self._combine([self._logits(o, target)[:, -1] for o in outs], weights)
                if np.isclose(temp, 0, atol=1e-10):
                    sample = torch.argmax(last, dim=-1, keepdim=True)
                else:
                    probs = F.softmax(self.top_k_top_p_filtering(last, top_k, top_p) / temp, dim=-1)
                    sample = torch.multinomial(probs, 1)
                out = torch.cat((out, sample), dim=-1)
                if (out == eos).any(-1).all():
                    break
        for md in dicts:
            md[target] = merge_sequences_batched(md[target], out, text_tokenizer)

    # --- public API ----------------------------------------------------------------------------------------
    def check_schedule(self, mod_dict: dict, schedule: list[dict], text_tokenizer=None, multi: bool = False) -> None:
        """Every problem a schedule has on this model and ``mod_dict``, raised before any forward pass."""
        m = self.model
        left = {}
        for i, step in enumerate(schedule):
            target, scheme = step["target_domain"], step.get("scheme", "maskgit")
            where = f"schedule step {i} (target {target!r})"
            if target not in m.decoder_embeddings:
                raise ScheduleError(f"{where}: the model has no decoder for {target!r}; it generates "
                                    f"{sorted(m.decoder_embeddings)}")
            if target not in mod_dict:
                raise ScheduleError(f"{where}: {target!r} is not in mod_dict; add it with init_empty_target_modality")
            kind = kind_of(m.modality_info[target])
            if kind == "seq":
                if scheme != "autoregressive":
                    raise ScheduleError(f"{where}: {scheme} decodes token grids, but {target} is a sequence; "
                                        "schedule it with the 'autoregressive' scheme")
                if text_tokenizer is None:
                    raise ScheduleError(f"{where}: decoding the sequence {target} needs text_tokenizer= (the model's "
                                        "text tokenizer, to merge the generated span)")
            else:
                if scheme not in ("maskgit", "roar"):
                    raise ScheduleError(f"{where}: {target} is a token grid; decode it with 'maskgit' or 'roar', not {scheme!r}")
                if target not in left:
                    left[target] = int((~mod_dict[target]["target_mask"]).sum(1).min())
                left[target] -= step["num_tokens"]
                if left[target] < 0:
                    raise ScheduleError(f"{where}: the schedule decodes more tokens of {target} than the "
                                        f"{int((~mod_dict[target]['target_mask']).sum(1).min())} it has left to "
                                        "generate; lower tokens_per_target or the steps' num_tokens")
            scale = step.get("cfg_scale", 1.0)
            if multi:
                if not isinstance(scale, (list, tuple)):
                    raise ScheduleError(f"{where}: generate_multi_guided weighs each condition; cfg_scale must be a "
                                        f"list of floats, one per condition dict, got {scale!r}")
            elif isinstance(scale, (list, tuple)):
                raise ScheduleError(f"{where}: a list of cfg scales weighs several conditions; use "
                                    "generate_multi_guided, or one float here")
            check_cfg_scale(scale, where)
            missing = [c for c in step.get("cfg_cond_domains", []) if c not in mod_dict and not multi]
            if missing and scale != 1.0:
                raise ScheduleError(f"{where}: guidance conditions {missing} are not in mod_dict")

    @torch.no_grad()
    def generate(self, mod_dict: dict, schedule: list[dict], top_k=0.0, top_p=0.0, text_tokenizer=None,
                 verbose: bool = False, seed: int | None = None) -> dict:
        """Run the whole schedule; returns a new mod_dict with every target generated."""
        for mod_dict in self.generate_iter(mod_dict, schedule, top_k=top_k, top_p=top_p,
                                           text_tokenizer=text_tokenizer, verbose=verbose, seed=seed):
            pass
        return mod_dict

    @torch.no_grad()
    def generate_iter(self, mod_dict: dict, schedule: list[dict], top_k=0.0, top_p=0.0, text_tokenizer=None,
                      verbose: bool = False, seed: int | None = None):
        """Like :meth:`generate`, yielding the mod_dict after each step of the schedule."""
        self.check_schedule(mod_dict, schedule, text_tokenizer)
        mod_dict = copy.deepcopy(mod_dict)
        for step, info in tqdm(enumerate(schedule), total=len(schedule), disable=not verbose, desc="generate"):
            scale, conds = info.get("cfg_scale", 1.0), info.get("cfg_cond_domains", [])
            seed_i = seed + step if seed is not None else None
            if scale == 1.0 or not conds:
                dicts, weights = [mod_dict], None
            else:
                dicts, weights = [mod_dict, self._unconditional(mod_dict, conds)], scale
            self._step(dicts, weights, info, top_k, top_p, text_tokenizer, seed_i)
            yield mod_dict

    @torch.no_grad()
    def generate_multi_guided(self, uncond_dict: dict, cond_dicts: list[dict], schedule: list[dict], top_k=0.0,
                              top_p=0.0, text_tokenizer=None, verbose: bool = False, seed: int | None = None) -> dict:
        """Guidance by several conditions at once, each with its weight (``cfg_scale`` of a step: one float per
        condition dict, negative to steer away): ``uncond + sum_i w_i (cond_i - uncond)``.

        ``uncond_dict`` holds the targets (and any unguided inputs); ``cond_dicts[i]`` the inputs of condition i.
        A finished target becomes a further condition of weight 1 for the targets after it."""
        self.check_schedule(uncond_dict, schedule, text_tokenizer, multi=True)
        uncond_dict, cond_dicts = copy.deepcopy(uncond_dict), copy.deepcopy(cond_dicts)
        weights = [list(s["cfg_scale"]) for s in schedule]
        if any(len(w) != len(cond_dicts) for w in weights[:1]):
            raise ScheduleError(f"generate_multi_guided: {len(cond_dicts)} condition dicts but cfg_scale {weights[0]}; "
                                "give one weight per condition")
        cur = schedule[0]["target_domain"]
        for c in cond_dicts:
            c[cur] = copy.deepcopy(uncond_dict[cur])
        extra = 0
        for step, info in tqdm(enumerate(schedule), total=len(schedule), disable=not verbose, desc="generate"):
            target = info["target_domain"]
            if target != cur:  # the finished target joins the conditions, and leaves the unconditional inputs
                for c in cond_dicts:
                    del c[cur]
                    c[target] = copy.deepcopy(uncond_dict[target])
                new_cond = {cur: copy.deepcopy(uncond_dict[cur]), target: copy.deepcopy(uncond_dict[target])}
                new_cond[cur]["input_mask"][:] = False
                new_cond[cur]["target_mask"][:] = True
                uncond_dict[cur]["input_mask"][:] = True
                cond_dicts.append(new_cond)
                extra += 1
                cur = target
            seed_i = seed + step if seed is not None else None
            w = [float(x) for x in info["cfg_scale"]] + [1.0] * extra
            self._step([uncond_dict] + cond_dicts, w, info, top_k, top_p, text_tokenizer, seed_i)
        return uncond_dict

    def _step(self, dicts, weights, info, top_k, top_p, text_tokenizer, seed):
        target = info["target_domain"]
        if kind_of(self.model.modality_info[target]) == "img":
            self._grid_step(dicts, weights, target, info["scheme"].lower(), info["num_tokens"], info["temperature"],
                            top_k, top_p, seed)
        else:
            self._ar_step(dicts, weights, target, info["temperature"], top_k, top_p, text_tokenizer, seed)

    def _unconditional(self, mod_dict: dict, conds: list[str]) -> dict:
        """A copy of ``mod_dict`` with each guidance condition emptied (nothing of it visible)."""
        out = copy.deepcopy(mod_dict)
        for mod in conds:
            if self.model.modality_info[mod]["type"] == "seq_emb":
                empty_seq_emb_modality(out, mod)
            elif kind_of(self.model.modality_info[mod]) == "seq":
                empty_seq_modality(out, mod)
            else:
                empty_img_modality(out, mod)
        return out


def merge_sequences_batched(d: dict, pred_ids: torch.Tensor, text_tokenizer) -> dict:
    """Each row's generated span(s) merged into its input (span-masking merge), rows right-padded with [PAD].

    The result is a plain input sequence: every token visible, padding masked."""
    sentinels = sentinel_ids(text_tokenizer)
    s1 = text_tokenizer.token_to_id("[S_1]")
    pad = text_tokenizer.token_to_id("[PAD]")
    rows = []
    for t, im, p in zip(d["tensor"], d["input_mask"], pred_ids):
        inp = t[~im].tolist() or [s1]
        rows.append(merge_spans(inp, p.tolist(), sentinels))
    L = max(len(r) for r in rows)
    device = d["tensor"].device
    tensor = torch.tensor([r + [pad] * (L - len(r)) for r in rows], dtype=torch.int64, device=device)
    input_mask = torch.tensor([[False] * len(r) + [True] * (L - len(r)) for r in rows], dtype=torch.bool, device=device)
    return {"tensor": tensor, "input_mask": input_mask, "target_mask": input_mask.clone(),
            "decoder_attention_mask": torch.zeros_like(input_mask)}


def _stack(dicts: list[dict]) -> dict:
    """Several mod_dicts as one batch (modalities a dict lacks are added fully hidden)."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    out = {}
    for k in keys:
        ref = next(d[k] for d in dicts if k in d)
        parts = []
        for d in dicts:
            if k in d:
                parts.append(d[k])
            else:
                hidden = {kk: v.clone() for kk, v in ref.items() if torch.is_tensor(v)}
                hidden["input_mask"] = torch.ones_like(ref["input_mask"])
                parts.append(hidden)
        out[k] = {kk: torch.cat([p[kk] for p in parts]) for kk in ("tensor", "input_mask") if kk in ref}
    return out
