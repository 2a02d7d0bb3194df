"""IN1K fine-tune step throughput: our step against plain baselines of the same step (measured in this run).

    python -m benchmarks.transfer [--model fm_micro_4e_4d_swiglu_nobias] [--size 128] [--batch 16] [--rounds 5]

"ours" is the step `transfer.classification` runs: mixup/cutmix -> encoder -> mean pool -> LayerNorm -> head ->
soft-target CE -> backward -> AdamW over the layer-wise LR decay groups, LRs set by the timm cosine scheduler.
Baselines change one thing each:
  * ``single-group``: AdamW over ``model.parameters()`` (one group, no layer decay, no scheduler call);
  * ``naive-pool``: the token mean written as a Python loop over tokens (what a hand-rolled head might do).
The variants are timed in alternation (one step each per round, in rotating order, ``--rounds`` rounds after
warm-up) so load from other processes hits all of them alike; median step times are compared, and the ratio of the
fastest steps is printed too. Printed: images/s and ours / baseline (above 1: ours is faster).
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from transfer import classification as cls

TRAIN = {"epochs": 10, "warmup_epochs": 1, "batch_size": 16, "accum_iter": 1, "blr": 5e-4, "lr": None, "min_lr": 1e-6,
         "weight_decay": 0.05, "layer_decay": 0.65, "drop_path": 0.1, "betas": [0.9, 0.999], "mixup": 0.8, "cutmix": 1.0,
         "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch", "smoothing": 0.1, "head_init_std": 2e-5}


class NaivePoolClassifier(cls.Classifier):
    """The same model with the token mean as a Python loop (baseline only)."""

    def forward(self, x):
        tokens = self.backbone.forward_features(x)
        pooled = sum(tokens[:, i] for i in range(tokens.shape[1])) / tokens.shape[1]
        return self.head(self.fc_norm(pooled))


def _variant(name: str, model_name: str, size: int, num_classes: int, train: dict):
    torch.manual_seed(0)
    cfg = {"transfer": {"init": "random", "model": model_name}, "train": {**train, "image_size": size}}
    model = cls.build_model(cfg, num_classes)
    if name == "naive-pool":
        model.__class__ = NaivePoolClassifier
    if name == "single-group":
        opt = torch.optim.AdamW(model.parameters(), lr=cls.peak_lr(train), betas=tuple(train["betas"]),
                                weight_decay=train["weight_decay"])
        sched = None
    else:
        opt = cls.build_optimizer(model, train)
        sched = cls.build_scheduler(opt, train, updates_per_epoch=100)
    mixup = cls.build_mixup(train, num_classes)
    return {"model": model.train(), "opt": opt, "sched": sched, "mixup": mixup, "criterion": cls.build_criterion(train, mixup),
            "step": 0}


def _step(v: dict, images: torch.Tensor, targets: torch.Tensor) -> float:
    t0 = time.perf_counter()
    if v["sched"] is not None:
        v["sched"].step_update(v["step"])
    x, y = v["mixup"](images.clone(), targets.clone())
    loss = v["criterion"](v["model"](x), y)
    loss.backward()
    v["opt"].step()
    v["opt"].zero_grad(set_to_none=True)
    v["step"] += 1
    return time.perf_counter() - t0


def measure(model: str = "fm_micro_4e_4d_swiglu_nobias", size: int = 128, batch: int = 16, rounds: int = 5,
            warmup: int = 2, num_classes: int = 1000) -> dict:
    """Median seconds per step and images/s of ours and of each baseline."""
    train = {**TRAIN, "batch_size": batch}
    names = ("ours", "single-group", "naive-pool")
    variants = {n: _variant(n, model, size, num_classes, train) for n in names}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = torch.randint(0, num_classes, (batch,), generator=g)
    times = {n: [] for n in names}
    for r in tqdm(range(warmup + rounds), desc="transfer step benchmark", leave=False):
        for n in names[r % 3:] + names[:r % 3]:  # rotate the order so no variant always runs first
            t = _step(variants[n], images, targets)
            if r >= warmup:
                times[n].append(t)
    med = {n: sorted(ts)[len(ts) // 2] for n, ts in times.items()}
    best = {n: min(ts) for n, ts in times.items()}
    return {"best_step_s": best, "model": model, "size": size, "batch": batch, "rounds": rounds,
            "params": sum(p.numel() for p in variants["ours"]["model"].parameters()),
            "step_s": med, "img_s": {n: batch / s for n, s in med.items()},
            "groups": len(variants["ours"]["opt"].param_groups)}


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.transfer", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fm_micro_4e_4d_swiglu_nobias")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.batch % 2:
        p.error("--batch must be even (mixup/cutmix in batch mode)")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.model, args.size, args.batch, args.rounds)
    ours = r["img_s"]["ours"]
    print(f"IN1K fine-tune step, {r['model']} ({r['params'] / 1e6:.1f} M params) at {r['size']} px, batch {r['batch']}, "
          f"median of {r['rounds']} rounds, {torch.get_num_threads()} threads")
    print(f"  ours ({r['groups']} layer-decay groups, mean pool): {ours:.1f} img/s ({r['step_s']['ours'] * 1e3:.0f} ms/step)")
    for n in ("single-group", "naive-pool"):
        print(f"  baseline {n}: {r['img_s'][n]:.1f} img/s -> ours / baseline = {ours / r['img_s'][n]:.3f} "
              f"(fastest steps: {r['best_step_s'][n] / r['best_step_s']['ours']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
