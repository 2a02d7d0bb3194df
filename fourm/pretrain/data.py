"""Batches for pretraining: token samples -> deterministic global batches -> 4M masking -> this rank's rows.

Every (step, micro-step) maps to a fixed set of sample indices (a seeded permutation per epoch) and a fixed masking
seed, and masking runs on the *global* micro-batch before each rank takes its rows: the same global batch is seen
whatever the number of processes, and a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import torch

from fourm import modalities as M
from fourm.modalities import has_spec, spec
from fourm.data.masking import UnifiedMasking, trim_sequence_padding
from fourm.data.text import coord_bins, load_tokenizer
from fourm.distributed import DistEnv

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def collate(samples: list[dict], modalities: list[str]) -> dict:
    """Stack token grids / images; keep sequences as lists of strings (or chunk lists) for the masking."""
    out = {}
    for mod in modalities:
        kind = M.get(mod).kind
        vals = [s[mod] for s in samples]
        if kind in ("sequence", "embedding_sequence"):  # strings / chunk lists; embeddings of varying length
            out[mod] = list(vals)
        elif kind == "image":
            x = torch.stack([torch.as_tensor(v) for v in vals])
            if x.dtype == torch.uint8:  # HWC or CHW uint8 -> normalised float CHW
                if x.shape[-1] == 3:
                    x = x.permute(0, 3, 1, 2)
                x = (x.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
            out[mod] = x
        else:
            out[mod] = torch.stack([torch.as_tensor(v).long() for v in vals])
    return out


def slice_rows(mod_dict: dict, start: int, stop: int) -> dict:
    return {m: {k: (v[start:stop] if torch.is_tensor(v) else v) for k, v in d.items()} for m, d in mod_dict.items()}


def load_token_samples(pattern: str, modalities: list[str], bins: int | None = None) -> list[dict]:
    """Every sample of token shards (braceexpand pattern) in memory, with all its stored crops, in shard order.

    A sample holds, per modality, a list over crops (token grids ``[h, w]``, RGB ``uint8 [3, S, S]``, det as box
    chunk strings in ``bins`` coordinate bins, the official 1000 by default; sam_instance strings), a list of variants
    (colour palettes of 1..7 colours) or a single value (caption, metadata chunks, T5 embeddings ``[L, D]``);
    ``__crops__`` says how many crops. Pretraining picks one crop and one variant per step.
    """
    import io
    import json

    import numpy as np

    from fourm.data.text import COORD_BINS, boxes_to_chunks
    from fourm.tokenizers.shards import SEQUENCE_FILES, ShardError, expand_shards, iter_shard

    bins = bins or COORD_BINS
    out = []
    for path in expand_shards(pattern):
        for header, raw in iter_shard(path):
            token_mods, n = header["modalities"], header["crops"]
            sample = {"__key__": raw["__key__"], "__crops__": n}
            cropped, variants = [], []
            for m in modalities:
                kind = M.get(m).kind
                if kind == "sequence" and m not in SEQUENCE_FILES:
                    raise ShardError(f"{path}: no shard format for the sequence modality {m!r} (known: "
                                     f"{sorted(SEQUENCE_FILES)}); drop it from model.domains_in/out")
                ext, per = SEQUENCE_FILES[m] if kind == "sequence" else (f"{m}.npy", "crops")
                if ext not in raw:
                    raise ShardError(f"{path}: sample {raw['__key__']!r} has no {m!r} ({ext}); "
                                     f"re-encode with this modality or drop it from model.domains_in/out")
                if kind == "sequence":
                    value = raw[ext].decode().strip() if ext.endswith(".txt") else json.loads(raw[ext])
                    if spec(m).value == "boxes":
                        value = [boxes_to_chunks(b, 1, bins) for b in value]
                    sample[m] = value
                    (cropped if per == "crops" else variants if per == "variants" else []).append(m)
                    continue
                arr = np.load(io.BytesIO(raw[ext]), allow_pickle=False)
                if kind == "embedding_sequence":  # [L, D] for the whole sample
                    sample[m] = torch.from_numpy(arr.astype(np.float32))
                    continue
                if m in token_mods and int(arr.max(initial=0)) >= token_mods[m]["vocab_size"]:
                    raise ShardError(f"{path}: {m} token id {int(arr.max())} >= vocab {token_mods[m]['vocab_size']}")
                t = torch.from_numpy(arr.astype(np.int64) if m in token_mods else np.ascontiguousarray(arr))
                sample[m] = [t[c] if m in token_mods else t[c].permute(2, 0, 1) for c in range(n)]
                cropped.append(m)
            sample["__cropped__"], sample["__variants__"] = tuple(cropped), tuple(variants)
            out.append(sample)
    return out


class PretrainData:
    """Deterministic train/val batches for the pretraining loop."""

    def __init__(self, cfg: dict, env: DistEnv, train_samples: list[dict] | None = None, val_samples: list[dict] | None = None):
        self.cfg, self.env = cfg, env
        mcfg = cfg["model"]
        self.modalities = list(dict.fromkeys(list(mcfg["domains_in"]) + list(mcfg["domains_out"])))
        data = cfg["data"]
        tok = load_tokenizer(data["text_tokenizer"]) if any(M.get(m).kind == "sequence" for m in self.modalities) else None
        bins = coord_bins(tok) if tok is not None else None  # boxes are written in the tokenizer's coordinate bins
        if any(has_spec(m) and spec(m).value == "boxes" for m in self.modalities) and bins is None:
            raise ValueError(f"data.text_tokenizer={data['text_tokenizer']}: has no box coordinate tokens (v0=0, ...), "
                             "so det cannot be tokenized; train it with fourm.data.text.train_wordpiece")
        self.train = (train_samples if train_samples is not None
                      else load_token_samples(data["train"], self.modalities, bins))
        self.val = val_samples if val_samples is not None else load_token_samples(data["val"], self.modalities, bins)
        if not self.train:
            raise ValueError(f"data.train={data.get('train')!r}: no samples; run `fourm-bench tokenize encode` first")
        self.masking = UnifiedMasking(self.modalities, alphas_spec(cfg["alphas"]), cfg["budget"]["num_input_tokens"],
                                      cfg["budget"]["num_target_tokens"], text_tokenizer=tok)
        per_step = cfg["batch_size"]
        if per_step % (env.world_size * cfg["accum_steps"]):
            raise ValueError(f"batch_size={per_step} must be divisible by world_size*accum_steps={env.world_size * cfg['accum_steps']}")
        self.micro = per_step // cfg["accum_steps"]  # global rows per micro-step
        self.local = self.micro // env.world_size

    def _indices(self, step: int, micro: int) -> list[int]:
        n = len(self.train)
        first = (step * self.cfg["accum_steps"] + micro) * self.micro
        out = []
        for pos in range(first, first + self.micro):
            epoch, i = divmod(pos, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg["seed"] * 7919 + epoch))
            out.append(int(perm[i]))
        return out

    def _masked(self, samples: list[dict], seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        batch = collate([_pick_crop(s, g) for s in samples], self.modalities)
        mod_dict = self.masking(batch, generator=g)
        r = self.env.rank
        mcfg, budget = self.cfg["model"], self.cfg["budget"]
        return trim_sequence_padding(slice_rows(mod_dict, r * self.local, (r + 1) * self.local), mcfg["domains_in"],
                                     mcfg["domains_out"], budget["num_input_tokens"], budget["num_target_tokens"])

    def train_batch(self, step: int, micro: int, seed: int) -> dict:
        return self._masked([self.train[i] for i in self._indices(step, micro)], seed)

    def val_batch(self, i: int, seed: int) -> dict:
        pool = self.val or self.train
        idx = [(i * self.micro + k) % len(pool) for k in range(self.micro)]
        return self._masked([pool[j] for j in idx], seed)


def data_vocab_sizes(cfg: dict) -> dict[str, int]:
    """The vocabularies of the model's token modalities as the data has them: the first train shard's header for
    token grids, the text tokenizer for sequences (``model.vocab_sizes=data``: the model's tables then fit the
    tokenizers actually used, e.g. a 256-code demo VQ-VAE instead of the official 16k rgb table)."""
    from fourm.tokenizers.shards import expand_shards, read_header

    mcfg, data = cfg["model"], cfg["data"]
    mods = [M.get(m) for m in dict.fromkeys(list(mcfg["domains_in"]) + list(mcfg["domains_out"]))]
    first = expand_shards(data["train"])[0]
    header = read_header(first).get("modalities", {})
    out, text_vocab = {}, None
    for mod in mods:
        if mod.kind == "image_tokens":
            if mod.name not in header:
                raise ValueError(f"model.vocab_sizes=data: shard {first} has no {mod.name!r} (it has {sorted(header)}); "
                                 f"re-encode with that tokenizer or drop it from the model's domains")
            out[mod.name] = int(header[mod.name]["vocab_size"])
        elif mod.kind == "sequence":
            text_vocab = text_vocab or int(load_tokenizer(data["text_tokenizer"]).get_vocab_size())
            out[mod.name] = text_vocab
    return out


def alphas_spec(alphas_cfg):
    return alphas_cfg["spec"] if isinstance(alphas_cfg, dict) and "spec" in alphas_cfg else alphas_cfg


def _pick_crop(sample: dict, g: torch.Generator) -> dict:
    """Samples from shards hold every stored crop (token augmentation): pick one, the same for every modality; and
    one variant of each modality that has several (palette sizes)."""
    cropped, variants = sample.get("__cropped__", ()), sample.get("__variants__", ())
    if not cropped and not variants:
        return sample
    out = dict(sample)
    if cropped:
        c = int(torch.randint(0, sample["__crops__"], (1,), generator=g))
        out.update({k: sample[k][c] for k in cropped})
    for k in variants:
        out[k] = sample[k][int(torch.randint(0, len(sample[k]), (1,), generator=g))]
    return out
