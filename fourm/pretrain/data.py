"""Batches for pretraining: token samples -> deterministic global batches -> 4M masking -> this rank's rows.

Every (step, micro-step) maps to a fixed set of sample indices (a seeded permutation per epoch) and a fixed masking
seed, and masking runs on the *global* micro-batch before each rank takes its rows: the same global batch is seen
whatever the number of processes, and a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import torch

from fourm import modalities as M
from fourm.data.masking import UnifiedMasking
from fourm.data.text import load_tokenizer
from fourm.pretrain.distributed import DistEnv

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def collate(samples: list[dict], modalities: list[str]) -> dict:
    """Stack token grids / images; keep sequences as lists of strings (or chunk lists) for the masking."""
    out = {}
    for mod in modalities:
        kind = M.get(mod).kind
        vals = [s[mod] for s in samples]
        if kind == "sequence":
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


def load_token_samples(pattern: str, modalities: list[str], seed: int = 0) -> list[dict]:
    """All samples of token shards (braceexpand pattern) in memory, one dict per sample, in shard order."""
    from fourm.tokenizers.shards import read_samples

    return read_samples(pattern, modalities)


class PretrainData:
    """Deterministic train/val batches for the pretraining loop."""

    def __init__(self, cfg: dict, env: DistEnv, train_samples: list[dict] | None = None, val_samples: list[dict] | None = None):
        self.cfg, self.env = cfg, env
        mcfg = cfg["model"]
        self.modalities = list(dict.fromkeys(list(mcfg["domains_in"]) + list(mcfg["domains_out"])))
        data = cfg["data"]
        self.train = train_samples if train_samples is not None else load_token_samples(data["train"], self.modalities)
        self.val = val_samples if val_samples is not None else load_token_samples(data["val"], self.modalities)
        if not self.train:
            raise ValueError(f"data.train={data.get('train')!r}: no samples; run `fourm-bench tokenize encode` first")
        tok = load_tokenizer(data["text_tokenizer"]) if any(M.get(m).kind == "sequence" for m in self.modalities) else None
        self.masking = UnifiedMasking(self.modalities, _alphas_spec(cfg["alphas"]), cfg["budget"]["num_input_tokens"],
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
        return slice_rows(mod_dict, r * self.local, (r + 1) * self.local)

    def train_batch(self, step: int, micro: int, seed: int) -> dict:
        return self._masked([self.train[i] for i in self._indices(step, micro)], seed)

    def val_batch(self, i: int, seed: int) -> dict:
        pool = self.val or self.train
        idx = [(i * self.micro + k) % len(pool) for k in range(self.micro)]
        return self._masked([pool[j] for j in idx], seed)


def _alphas_spec(alphas_cfg):
    return alphas_cfg["spec"] if isinstance(alphas_cfg, dict) and "spec" in alphas_cfg else alphas_cfg


def _pick_crop(sample: dict, g: torch.Generator) -> dict:
    """Samples may hold several stored crops (token augmentation): pick one, the same for every modality."""
    n = sample.get("__crops__", 1)
    if n <= 1:
        return sample
    c = int(torch.randint(0, n, (1,), generator=g))
    return {k: (v[c] if isinstance(v, (list, tuple)) and k in sample.get("__cropped__", ()) else v) for k, v in sample.items()}
