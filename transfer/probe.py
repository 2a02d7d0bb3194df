"""Frozen-feature classification protocols (``protocol=linear | knn``): encode once, then train/evaluate from a cache.

Every image is encoded once per (encoder, preprocessing, dataset): the cache holds, per split, the mean of the patch
tokens of each of the last 4 blocks (``CACHE_BLOCKS``; all of them for a shallower encoder), each block's tokens through the encoder's final norm first
(dinov2's ``get_intermediate_layers(norm=True)`` with average pooling; the 4M encoder has no class token). It lives
under ``<runs_root>/_features/<key>/`` (key: hash of the encoder file's bytes, or the model and seed of a random
init, the eval preprocessing and the split's file list), so a second probe of the same encoder (kNN after linear,
another seed, a low-shot fraction) encodes nothing. Files are ``.npy`` (float16 features ``[N, blocks, dim]``,
int64 labels) read memory-mapped, so the cache is never loaded whole; each run's ``features.json`` names its cache.

Linear (dinov2 ``eval/linear.py``): a grid of linear heads, one per (pooling, learning rate), trained together in one
pass over the cached training features (SGD, momentum 0.9, cosine schedule, lr = base lr x batch / 256) on features
standardised with the training set's mean and variance; pooling ``last1`` reads the last block, ``last4`` the last
four concatenated. Every head's val top-1/top-5 is in ``metrics.json`` (``grid``); ``top1``/``top5`` are the best
head's, chosen on the validation set as dinov2 does, and ``best`` names it.

kNN (dinov2 ``eval/knn.py``): L2-normalised ``last1`` features, cosine similarity to every training image, the k
nearest vote with weight exp(similarity / T); top-1/top-5 for each k, the best k in ``top1``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fourm.files import atomic_write_json
from transfer.configs import ConfigError

FEATURES_DIR = "_features"
CACHE_BLOCKS = 4  # dinov2's deepest pooling (the last 4 blocks): what every probe of an encoder can read
SAMPLES_FILE = "train_samples.txt"


# --- the cache key ------------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def encoder_identity(config: dict) -> dict:
    """What fixes the encoder's weights: the checkpoint's bytes, or (random init) the model and the run's seed."""
    t = config["transfer"]
    if t["init"] == "random":
        return {"init": "random", "model": t["model"], "seed": config["seed"]}
    return {"init_sha256": file_digest(t["init"]), "model": t["model"]}


def split_listing(dataset) -> list[tuple[str, int]]:
    """(path relative to the split's root, label) of every image of an ImageFolder, in its order."""
    root = Path(dataset.root)
    return [(str(Path(p).relative_to(root)), int(y)) for p, y in dataset.samples]


def cache_key(config: dict, encoder: dict, blocks: int, listings: dict[str, list]) -> str:
    """What makes two probe runs' features the same: the encoder, the cached depth, the eval preprocessing, the data."""
    train = config["train"]
    ident = {"encoder": encoder, "blocks": blocks, "image_size": train["image_size"], "crop_pct": train["crop_pct"],
             "interpolation": train["interpolation"], "mean": config["data"]["mean"], "std": config["data"]["std"],
             "splits": {k: hashlib.sha256(json.dumps(v).encode()).hexdigest() for k, v in listings.items()}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


# --- encoding -----------------------------------------------------------------------------------------
@torch.no_grad()
def encode_split(encoder, loader, out: Path, split: str, blocks: int, device: torch.device, total: int,
                 show: bool = True) -> None:
    """Write ``<out>/<split>_features.npy`` (float16 ``[N, blocks, dim]``) and ``<split>_labels.npy``, streamed."""
    depth = encoder.depth
    wanted = list(range(depth - blocks, depth))
    feats_tmp = out / f".{split}_features.{os.getpid()}.npy"
    feats = np.lib.format.open_memmap(feats_tmp, mode="w+", dtype=np.float16, shape=(total, blocks, encoder.dim))
    labels = np.empty(total, dtype=np.int64)
    i = 0
    for images, targets in tqdm(loader, desc=f"encode {split}", unit="batch", leave=False, disable=not show):
        _, per_block, _ = encoder.forward_features(images.to(device), out_indices=wanted)
        pooled = torch.stack([encoder.encoder_norm(x).mean(dim=1) for x in per_block], dim=1)
        n = pooled.shape[0]
        feats[i:i + n] = pooled.float().cpu().numpy().astype(np.float16)
        labels[i:i + n] = targets.numpy()
        i += n
    if i != total:
        raise RuntimeError(f"encode {split}: read {i} images, expected {total}")
    feats.flush()
    del feats
    np.save(out / f".{split}_labels.npy", labels)
    os.replace(out / f".{split}_labels.npy", out / f"{split}_labels.npy")
    os.replace(feats_tmp, out / f"{split}_features.npy")


def load_split(cache: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(cache / f"{split}_features.npy", mmap_mode="r"), np.load(cache / f"{split}_labels.npy")


def features(config: dict, run, datasets: dict, device: torch.device, show: bool = True) -> tuple[Path, int]:
    """The feature cache of this config's encoder and data (encoding what is missing); returns (folder, images encoded
    by this call)."""
    from transfer.adapter import build_encoder, encoder_config

    # every probe of an encoder shares one cache: the last CACHE_BLOCKS blocks (fewer if the encoder has fewer)
    blocks = min(CACHE_BLOCKS, int(encoder_config(config["transfer"]["init"], config["transfer"]["model"])["encoder_depth"]))
    listings = {split: split_listing(ds) for split, ds in datasets.items()}
    ident = encoder_identity(config)
    key = cache_key(config, ident, blocks, listings)
    cache = Path(config.get("_runs_root") or "runs/transfer") / FEATURES_DIR / key
    cache.mkdir(parents=True, exist_ok=True)
    todo = [s for s in datasets if not (cache / f"{s}_features.npy").exists()]
    encoded = 0
    if todo:
        torch.manual_seed(config["seed"])  # a random init is drawn from the run's seed, as fine-tuning draws it
        t = config["transfer"]
        encoder = build_encoder(t["init"], t["model"], ("rgb@224",), image_size=config["train"]["image_size"])
        encoder = encoder.to(device).eval()
        workers = int((config.get("_runtime") or {}).get("num_workers", 0))
        batch = int((config.get("_runtime") or {}).get("encode_batch_size", 64))
        for split in todo:
            loader = torch.utils.data.DataLoader(datasets[split], batch_size=batch, shuffle=False, num_workers=workers)
            encode_split(encoder, loader, cache, split, blocks, device, len(datasets[split]), show)
            encoded += len(datasets[split])
        atomic_write_json(cache / "meta.json", {"key": key, "encoder": ident, "blocks": blocks,
                                                "splits": {s: len(v) for s, v in listings.items()},
                                                "dim": int(encoder.dim)})
    run.log(event="features", cache=str(cache), encoded=encoded, cached=not todo)
    atomic_write_json(Path(run.path) / "features.json", {"cache": str(cache), "key": key, "encoded": encoded})
    return cache, encoded


# --- low-shot -----------------------------------------------------------------------------------------
def low_shot_indices(labels, fraction: float | None, shots: int | None, seed: int, class_names=None) -> np.ndarray:
    """Indices of the training images a low-shot run keeps, sorted: per class, a seeded permutation's first
    ``ceil(fraction x n_class)`` (at least one) or ``shots`` images. More shots than a class has is an error."""
    labels = np.asarray(labels)
    if shots is None and (fraction is None or fraction >= 1):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        if shots is not None:
            if shots > len(idx):
                name = class_names[c] if class_names is not None else int(c)
                raise ConfigError(f"data.shots_per_class={shots}: class {name!r} has only {len(idx)} training images; "
                                  f"lower data.shots_per_class to at most {len(idx)}")
            keep.append(idx[:shots])
        else:
            keep.append(idx[:max(1, math.ceil(fraction * len(idx)))])
    return np.sort(np.concatenate(keep))


def write_samples(run, listing: list[tuple[str, int]], kept: np.ndarray) -> None:
    """``<run>/train_samples.txt``: the training images a run used (paths relative to the train folder), one a line."""
    from fourm.files import atomic_write_text

    atomic_write_text(Path(run.path) / SAMPLES_FILE, "".join(f"{listing[i][0]}\n" for i in kept))


# --- linear heads -------------------------------------------------------------------------------------
def pooled(feats: np.ndarray, blocks: int) -> np.ndarray:
    """``[N, B, D]`` cached features -> ``[N, blocks * D]`` of the last ``blocks`` blocks, float16 as cached (a
    float32 copy of ImageNet's last 4 ViT-B blocks would be 16 GB; batches are cast when they are used)."""
    return np.ascontiguousarray(feats[:, feats.shape[1] - blocks:, :]).reshape(len(feats), -1)


class Standardised:
    """float16 features read as float32, standardised with the training rows' per-dimension mean and std (so one
    grid of learning rates fits every encoder), one batch at a time."""

    def __init__(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        self.x, self.mean, self.std = x, mean, std
        self.shape = x.shape

    @classmethod
    def fit(cls, train: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(train.shape[1], dtype=torch.float64)
        square = torch.zeros_like(total)
        for i in range(0, len(train), chunk):
            x = train[i:i + chunk].double()
            total += x.sum(0)
            square += (x * x).sum(0)
        n = len(train)
        mean = total / n
        var = (square - n * mean * mean) / max(n - 1, 1)
        return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> torch.Tensor:
        return (self.x[idx].float() - self.mean) / self.std


def head_name(blocks: int, lr: float) -> str:
    return f"last{blocks}_lr{lr:g}"


def topk_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample top-1 and top-5 hits (top-k with k = min(5, classes))."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top == y[:, None]
    return hit[:, 0], hit.any(dim=1)


def train_linear(train_x: dict[int, torch.Tensor], train_y: torch.Tensor, val_x: dict[int, torch.Tensor],
                 val_y: torch.Tensor, num_classes: int, probe: dict, seed: int, run=None) -> dict:
    """Every (pooling, lr) head trained in one pass over the same shuffled batches; returns per-head val results and
    the per-sample hits of each head."""
    g = torch.Generator().manual_seed(seed)
    heads, opts, names = [], [], []
    batch = min(int(probe["batch_size"]), len(train_y))
    steps_per_epoch = max(1, len(train_y) // batch)
    total = steps_per_epoch * int(probe["epochs"])
    for blocks in probe["blocks"]:
        for lr in probe["lrs"]:
            head = nn.Linear(train_x[blocks].shape[1], num_classes)
            with torch.no_grad():
                head.weight.normal_(0, 0.01, generator=g)
                head.bias.zero_()
            heads.append((blocks, head))
            opts.append(torch.optim.SGD(head.parameters(), lr=lr * batch / 256, momentum=0.9,
                                        weight_decay=float(probe["weight_decay"])))
            names.append(head_name(blocks, lr))
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0) for o in opts]
    losses = torch.zeros(len(heads))
    step = 0
    for epoch in tqdm(range(int(probe["epochs"])), desc="linear heads", unit="epoch", leave=False):
        order = torch.randperm(len(train_y), generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            y = train_y[idx]
            x = {b: train_x[b][idx] for b in train_x}  # one read of each pooling's batch for all its heads
            for h, ((blocks, head), opt, sched) in enumerate(zip(heads, opts, scheds)):
                loss = nn.functional.cross_entropy(head(x[blocks]), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses[h] = loss.detach()
            step += 1
        if run is not None:
            run.log(step=step, epoch=epoch, loss=float(losses.min()), loss_mean=float(losses.mean()))
    results, hits = {}, {}
    with torch.no_grad():
        for name, (blocks, head) in zip(names, heads):
            logits = torch.cat([head(val_x[blocks][i:i + 4096]) for i in range(0, len(val_y), 4096)])
            h1, h5 = topk_correct(logits, val_y)
            results[name] = {"top1": 100.0 * float(h1.float().mean()), "top5": 100.0 * float(h5.float().mean())}
            hits[name] = h1
    return {"grid": results, "hits": hits}


# --- kNN ----------------------------------------------------------------------------------------------
@torch.no_grad()
def knn(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
        ks, temperature: float, chunk: int = 1024) -> dict:
    """Weighted kNN top-1/top-5 for each k (k above the training set's size is clipped to it)."""
    train_x = nn.functional.normalize(train_x, dim=1)
    val_x = nn.functional.normalize(val_x, dim=1)
    ks = sorted({min(int(k), len(train_y)) for k in ks})
    kmax = ks[-1]
    hits = {k: ([], []) for k in ks}
    for start in range(0, len(val_y), chunk):
        sim = val_x[start:start + chunk] @ train_x.T
        top_sim, top_idx = sim.topk(kmax, dim=1)
        weight = (top_sim / temperature).exp()
        votes_of = nn.functional.one_hot(train_y[top_idx], num_classes).float() * weight[..., None]
        y = val_y[start:start + chunk]
        for k in ks:
            h1, h5 = topk_correct(votes_of[:, :k].sum(dim=1), y)
            hits[k][0].append(h1)
            hits[k][1].append(h5)
    out = {}
    for k in ks:
        h1, h5 = torch.cat(hits[k][0]), torch.cat(hits[k][1])
        out[f"k{k}"] = {"top1": 100.0 * float(h1.float().mean()), "top5": 100.0 * float(h5.float().mean()), "hits": h1}
    return out


# --- the run ------------------------------------------------------------------------------------------
def run(config: dict, run, datasets: dict, classes: list[str], device: torch.device) -> dict:
    """A linear or kNN probe run from the feature cache; returns its metrics (and writes the per-sample hits)."""
    protocol = config["transfer"]["protocol"]
    cache, encoded = features(config, run, datasets, device)
    train_f, train_y = load_split(cache, "train")
    val_f, val_y = load_split(cache, "val")
    data = config["data"]
    kept = low_shot_indices(train_y, data.get("train_fraction"), data.get("shots_per_class"),
                            int(data.get("subset_seed", 0)), classes)
    write_samples(run, split_listing(datasets["train"]), kept)
    train_y = torch.from_numpy(train_y[kept])
    val_y_t = torch.from_numpy(val_y)
    blocks = sorted(set(config["probe"]["blocks"])) if protocol == "linear" else [1]
    train_x, val_x = {}, {}
    for b in blocks:
        tx, vx = torch.from_numpy(pooled(train_f[kept], b)), torch.from_numpy(pooled(val_f, b))
        if protocol == "linear":
            mean, std = Standardised.fit(tx)
            tx, vx = Standardised(tx, mean, std), Standardised(vx, mean, std)
        else:
            tx, vx = tx.float(), vx.float()
        train_x[b], val_x[b] = tx, vx
    metrics = {"encoded_images": encoded, "train_images": int(len(kept)), "val_images": int(len(val_y)),
               "feature_cache": str(cache)}
    if protocol == "linear":
        out = train_linear(train_x, train_y, val_x, val_y_t, len(classes), config["probe"], config["seed"], run)
        grid, hits = out["grid"], out["hits"]
    else:
        found = knn(train_x[1], train_y, val_x[1], val_y_t, len(classes), config["knn"]["k"], config["knn"]["temperature"])
        grid = {k: {m: v for m, v in r.items() if m != "hits"} for k, r in found.items()}
        hits = {k: r["hits"] for k, r in found.items()}
    best = max(grid, key=lambda k: (grid[k]["top1"], grid[k]["top5"]))
    metrics.update({"top1": grid[best]["top1"], "top5": grid[best]["top5"], "best": best, "grid": grid})
    from fourm.per_sample import write_per_sample

    metrics.update(write_per_sample(run.path, {"correct": hits[best].numpy().astype(np.float64)},
                                    {"top1": {"kind": "mean", "values": "correct", "scale": 100.0}}))
    return metrics
