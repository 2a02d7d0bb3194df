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


class PretrainData:
    """Deterministic train/val batches from samples held in memory (small datasets and tests of the loop itself);
    data on disk streams through :class:`fourm.pretrain.stream.StreamingData`, whose memory does not grow with it."""

    def __init__(self, cfg: dict, env: DistEnv, train_samples: list[dict], val_samples: list[dict] | None = None):
        self.cfg, self.env = cfg, env
        mcfg = cfg["model"]
        self.modalities = list(dict.fromkeys(list(mcfg["domains_in"]) + list(mcfg["domains_out"])))
        tok, _ = text_tokenizer(cfg, self.modalities)
        self.train, self.val = list(train_samples), list(val_samples or [])
        if not self.train:
            raise ValueError("PretrainData: no train samples")
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
    """The vocabularies of the model's token modalities as the data has them: the encode index beside the data
    (official layouts written by ``fourm-bench tokenize encode``) or the first shard's header (the project's single
    tars) for token grids, the text tokenizer for sequences (``model.vocab_sizes=data``: the model's tables then fit
    the tokenizers actually used, e.g. a 256-code demo VQ-VAE instead of the official 16k rgb table)."""
    from fourm.tokenizers import layout
    from fourm.tokenizers.shards import read_header

    mcfg, data = cfg["model"], cfg["data"]
    mods = [M.get(m) for m in dict.fromkeys(list(mcfg["domains_in"]) + list(mcfg["domains_out"]))]
    src = layout.parse(data["train"])
    index = layout.index_of(data["train"])
    if index is not None:
        first, header = f"{data['train']} (its index)", index.get("modalities", {})
    elif src.layout == "tar":
        first = src.units[0]
        header = read_header(first).get("modalities", {})
    else:
        raise ValueError(f"model.vocab_sizes=data: {data['train']} has no encode index beside it ({{root}}.json) to "
                         "read the tokenizers' vocabularies from; set model.vocab_sizes={modality: size} instead")
    out, text_vocab = {}, None
    for mod in mods:
        if mod.kind == "image_tokens":
            if mod.name not in header:
                raise ValueError(f"model.vocab_sizes=data: {first} has no {mod.name!r} (it has {sorted(header)}); "
                                 f"re-encode with that tokenizer or drop it from the model's domains")
            out[mod.name] = int(header[mod.name]["vocab_size"])
        elif mod.kind == "sequence":
            text_vocab = text_vocab or int(load_tokenizer(data["text_tokenizer"]).get_vocab_size())
            out[mod.name] = text_vocab
    return out


def text_tokenizer(cfg: dict, modalities: list[str]):
    """``(tokenizer, box coordinate bins)`` for the sequence modalities of a run (``(None, None)`` without any);
    a tokenizer without box coordinate tokens cannot serve det."""
    if not any(M.get(m).kind == "sequence" for m in modalities):
        return None, None
    path = cfg["data"]["text_tokenizer"]
    tok = load_tokenizer(path)
    bins = coord_bins(tok)  # boxes are written in the tokenizer's coordinate bins
    if any(has_spec(m) and spec(m).value == "boxes" for m in modalities) and bins is None:
        raise ValueError(f"data.text_tokenizer={path}: has no box coordinate tokens (v0=0, ...), "
                         "so det cannot be tokenized; train it with fourm.data.text.train_wordpiece")
    return tok, bins


def alphas_spec(alphas_cfg):
    return alphas_cfg["spec"] if isinstance(alphas_cfg, dict) and "spec" in alphas_cfg else alphas_cfg


def dataset_alphas(alphas, modalities: list[str], domains_in: list[str], domains_out: list[str], where: str) -> dict:
    """The mixture a dataset of a multi-dataset run masks its rows with: its own alphas over the run's modalities,
    input alphas 0 for what it does not give as input, target alphas 0 for what it does not give as target (so a
    modality the dataset lacks gets no tokens, as in the official per-dataset modality lists)."""
    from fourm.data.masking import load_alphas

    mix = load_alphas(alphas_spec(alphas))
    have = set(domains_in) | set(domains_out)
    unknown = sorted(have - set(modalities))
    if unknown:
        raise ValueError(f"{where}: domains {unknown} are not the model's (model.domains_in / domains_out)")
    lacking = sorted(m for m in have if m not in mix.alphas)
    if lacking:
        raise ValueError(f"{where}: its alphas config {mix.source} has no alphas for {lacking}")
    c = mix.num_components
    out = {}
    for m in modalities:
        a = mix.alphas.get(m)
        out[m] = {"input_alphas": list(a.input_alphas) if a is not None and m in domains_in else [0.0] * c,
                  "target_alphas": list(a.target_alphas) if a is not None and m in domains_out else [0.0] * c,
                  "keep": list(a.keep) if a is not None else ["random"] * c}
    for key, doms in (("input_alphas", domains_in), ("target_alphas", domains_out)):
        for k in range(c):
            if not any(out[m][key][k] > 0 for m in modalities):
                had = [m for m, a in mix.alphas.items() if a is not None and getattr(a, key)[k] > 0]
                raise ValueError(f"{where}: component {k} of its alphas ({mix.source}) gives {key} only to {had}, which "
                                 f"this dataset does not have as {'input' if key == 'input_alphas' else 'target'} "
                                 f"({doms}); give the dataset alphas of its own ({where}.alphas, or its alphas_config in an "
                                 "official data config)")
    if mix.sampling_weights is not None:
        return {"sampling_weights": list(mix.sampling_weights), "alphas_mixture": out}
    return out


def absent_value(mod: str, image_size: int | None = None):
    """What a sample of a dataset without ``mod`` holds for it, so rows of several datasets stack: masked with
    budgets 0 it is neither input nor target."""
    m = M.get(mod)
    if m.kind == "image_tokens":
        return torch.zeros(m.grid, m.grid, dtype=torch.long)
    if m.kind == "image":
        size = image_size or m.input_size
        return torch.zeros(m.num_channels, size, size, dtype=torch.uint8)
    if m.kind == "embedding_sequence":
        return torch.zeros(0, m.embedding_dim)
    return ""


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
