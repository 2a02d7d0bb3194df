"""Build the per-modality dicts a generation starts from (the official helpers, same names and signatures).

A dict per modality holds ``tensor`` and the masks of the official batch format (True = not used): an input is
visible to the encoder where ``input_mask`` is False; a target is decoded where ``target_mask`` is False.
"""
from __future__ import annotations

import re

import torch

from fourm.data.text import PAD

S1_ID = 5  # id of [S_1] in the official WordPiece vocabulary (and in ours: [PAD] [UNK] [SOS] [EOS] [S_0] [S_1] ...)


def kind_of(modality) -> str:
    """'img' (token grids, raw images) or 'seq' (captions, boxes, embeddings), from a Modality or an official info dict."""
    return "seq" if modality["type"] in ("seq", "seq_token", "seq_emb") else "img"


def _kind(modality_info, domain: str) -> str:
    try:
        return kind_of(modality_info[domain])
    except KeyError:
        raise KeyError(f"no modality {domain!r} in modality_info; known: {sorted(modality_info)}") from None


def empty_img_modality(mod_dict: dict, key: str) -> dict:
    """Every position of ``key`` becomes a target (none is an input)."""
    mod_dict[key]["input_mask"][:] = True
    mod_dict[key]["target_mask"][:] = False
    return mod_dict


def empty_seq_modality(mod_dict: dict, key: str, s1_id: int = S1_ID) -> dict:
    """``[S_1] [S_1] 0 ... 0 [S_2]``: the first [S_1] is the only input, the rest the target span."""
    d = mod_dict[key]
    d["tensor"][:] = 0
    d["tensor"][:, [0, 1]] = s1_id
    d["tensor"][:, -1] = s1_id + 1
    d["input_mask"][:] = True
    d["input_mask"][:, 0] = False
    d["target_mask"][:] = False
    d["target_mask"][:, 0] = True
    if "decoder_attention_mask" in d:
        d["decoder_attention_mask"][:] = 1
        d["decoder_attention_mask"][:, 0] = 0
    return mod_dict


def empty_seq_emb_modality(mod_dict: dict, key: str) -> dict:
    """An embedding sequence with nothing in it: zero rows, only the first one visible (as the official code keeps
    one position so that a guided pass still has the modality)."""
    d = mod_dict[key]
    d["tensor"] = torch.zeros_like(d["tensor"])
    d["input_mask"] = torch.ones_like(d["input_mask"])
    d["input_mask"][:, 0] = False
    d["target_mask"] = torch.ones_like(d["target_mask"])
    if "decoder_attention_mask" in d:
        d["decoder_attention_mask"] = torch.zeros_like(d["decoder_attention_mask"])
    return mod_dict


def init_empty_target_modality(mod_dict: dict, modality_info, domain: str, batch_size: int, num_tokens: int,
                               device) -> dict:
    """Add ``domain`` to ``mod_dict`` as a target with ``num_tokens`` positions, all still to generate."""
    if _kind(modality_info, domain) == "img":
        mod_dict[domain] = {
            "tensor": torch.zeros((batch_size, num_tokens), dtype=torch.int64, device=device),
            "input_mask": torch.ones((batch_size, num_tokens), dtype=torch.bool, device=device),
            "target_mask": torch.zeros((batch_size, num_tokens), dtype=torch.bool, device=device),
        }
        return empty_img_modality(mod_dict, domain)
    num_tokens = max(num_tokens, 2)
    mod_dict[domain] = {
        "tensor": torch.zeros((batch_size, num_tokens), dtype=torch.int32, device=device),
        "input_mask": torch.ones((batch_size, num_tokens), dtype=torch.bool, device=device),
        "target_mask": torch.zeros((batch_size, num_tokens), dtype=torch.bool, device=device),
        "decoder_attention_mask": torch.zeros((batch_size, num_tokens), dtype=torch.bool, device=device),
    }
    return empty_seq_modality(mod_dict, domain)


def init_full_input_modality(mod_dict: dict, modality_info, domain: str, device, eos_id: int = 3) -> dict:
    """Mark ``domain`` (already holding its ``tensor``) as a full input: an image entirely, a sequence up to [EOS]."""
    d = mod_dict[domain]
    if domain.startswith("rgb"):
        B, _, H, W = d["tensor"].shape
        p = modality_info[domain]["patch_size"]
        shape = (B, (H // p) * (W // p))
    else:
        shape = d["tensor"].shape
    d.setdefault("input_mask", torch.zeros(shape, dtype=torch.bool, device=device))
    d.setdefault("target_mask", torch.ones(shape, dtype=torch.bool, device=device))
    d.setdefault("decoder_attention_mask", torch.zeros(shape, dtype=torch.bool, device=device))
    if _kind(modality_info, domain) == "img":
        d["input_mask"][:] = False
        d["target_mask"][:] = True
    else:
        if (d["tensor"] == eos_id).any():
            eos_idx = torch.where(d["tensor"] == eos_id)[1][0].item()
        else:
            d["tensor"][:, 0] = eos_id
            eos_idx = 0
        d["input_mask"][:, : eos_idx + 1] = False
        d["input_mask"][:, eos_idx + 1:] = True
        d["target_mask"][:] = True
    return mod_dict


def custom_text(sample: dict, input_text: str, eos_token: str, key: str, device, text_tokenizer,
                target_max_len: int = 50, start_token: str = "[S_1]") -> dict:
    """A sequence modality from text: ``input_text`` is the input; a target span of ``target_max_len`` follows it,
    from ``start_token`` to ``eos_token`` (e.g. "a red [S_1]" with eos "[S_2]" continues the caption)."""
    input_ids = torch.tensor(text_tokenizer.encode(input_text).ids).unsqueeze(0)
    target_text = " ".join([start_token] + [PAD] * (target_max_len - 2) + [eos_token])
    target_ids = torch.tensor(text_tokenizer.encode(target_text).ids).unsqueeze(0)
    all_ids = torch.cat([input_ids, target_ids], dim=1)
    sample[key] = {
        "tensor": all_ids.to(device),
        "input_mask": torch.cat([torch.zeros_like(input_ids, dtype=torch.bool),
                                 torch.ones_like(target_ids, dtype=torch.bool)], dim=1).to(device),
        "target_mask": torch.cat([torch.ones_like(input_ids, dtype=torch.bool),
                                  torch.zeros_like(target_ids, dtype=torch.bool)], dim=1).to(device),
        "decoder_attention_mask": torch.zeros(all_ids.shape, dtype=torch.bool, device=device),
    }
    return sample


def full_sequence_input(mod_dict: dict, key: str, rows: list[list[int]], pad_id: int, device="cpu") -> dict:
    """A sequence modality given in full as a condition: one row of token ids per sample (each ending in [EOS]),
    padded with ``pad_id``; the padding is neither input nor target."""
    width = max(map(len, rows))
    tensor = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    pad = torch.tensor([[False] * len(r) + [True] * (width - len(r)) for r in rows], device=device)
    mod_dict[key] = {"tensor": tensor, "input_mask": pad, "target_mask": torch.ones_like(pad),
                     "decoder_attention_mask": torch.zeros_like(pad)}
    return mod_dict


def expand_to_batch(mod_dict: dict, batch_size: int) -> dict:
    """Repeat every batch-1 tensor of ``mod_dict`` to ``batch_size`` rows (other sizes must already match)."""
    for mod, d in mod_dict.items():
        for k, v in d.items():
            if k in ("tensor", "input_mask", "target_mask", "decoder_attention_mask"):
                if v.shape[0] == 1:
                    d[k] = v.expand(batch_size, *v.shape[1:]).clone()
                elif v.shape[0] != batch_size:
                    raise ValueError(f"{mod}.{k} has batch size {v.shape[0]}, expected 1 or {batch_size}")
    return mod_dict


def sentinel_ids(text_tokenizer) -> set[int]:
    """Ids of every ``[S_i]`` token of a text tokenizer (HF ``tokenizers.Tokenizer``)."""
    vocab = text_tokenizer.get_vocab(with_added_tokens=True)
    return {i for t, i in vocab.items() if re.fullmatch(r"\[S_\d+\]", t)}
