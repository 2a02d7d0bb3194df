"""Tiny VQ-VAE tokenizers on the synthetic world, against trivial baselines measured in the same run.

    python -m benchmarks.tokenizers [--work /tmp/fourm-tok-bench] [--train 1024] [--val 256] [--size 64]
                                    [--epochs 10] [--modalities depth,semseg,normal,rgb] [--crops 4]
    fourm-bench bench tokenizers --official     # the released tokenizers' encode / decode throughput instead

Renders the world (if not there yet), trains one tiny tokenizer per modality on CPU (resumes/skips runs already
done in --work), prints validation reconstruction metrics next to the best constant predictor (mean depth, majority
class, mean normal, mean colour) with their ratio, then encodes the val split into token shards and prints their
size. Takes a few minutes per modality on one CPU thread; not part of the test suite.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from fourm.data import world
from fourm.tokenizers.encode import encode_dataset
from fourm.tokenizers.train import compose_config, train

# (metric, higher is better) reported per modality
HEADLINE = {
    "depth": [("mae", False), ("abs_rel", False), ("delta1", True)],
    "semseg": [("pixel_acc", True), ("miou", True)],
    "normal": [("angle_deg", False), ("within_11deg", True)],
    "rgb": [("mae", False), ("psnr", True)],
}


def run(work: Path, n_train: int, n_val: int, size: int, epochs: int, modalities: list[str], crops: int,
        extra: list[str]) -> None:
    data = work / f"world{size}"
    world.generate(str(data), n_train, size, seed=0, split="train")
    world.generate(str(data), n_val, size, seed=0, split="val")
    runs = {}
    for mod in modalities:
        cfg = compose_config("train", [f"modality={mod}", f"data={data}", f"out={work / 'runs'}", f"epochs={epochs}",
                                       f"model.image_size={size}", *extra])
        runs[mod] = train(cfg, progress=os.environ.get("FOURM_NO_PROGRESS") is None)

    print(f"\nworld {size}px, {n_train} train / {n_val} val images, tiny tokenizers, {epochs} epochs")
    print(f"{'modality':8} {'metric':13} {'tokenizer':>10} {'constant':>10} {'ratio':>7}   train s  steps  codes  run")
    for mod, r in runs.items():
        m = r.metrics
        base = m["baselines"]["constant"]
        for i, (k, higher) in enumerate(HEADLINE[mod]):
            v, b = m["val"][k], base[k]
            ratio = (v / b if higher else b / v) if min(abs(v), abs(b)) > 0 else float("inf")
            tail = (f"   {m['train_seconds']:7.1f}  {m['steps']:5d}  {m['val']['codes_used']:5d}  {r.path}"
                    if i == 0 else "")
            print(f"{mod:8} {k:13} {v:10.4f} {b:10.4f} {ratio:6.1f}x{tail}")
        if "image_mean" in m["baselines"]:
            o = m["baselines"]["image_mean"]
            print(f"{'':8} {'(oracle per-image mean depth: mae ' + format(o['mae'], '.4f') + ')'}")

    shards = work / "shards" / f"{'-'.join(runs)}-{'-'.join(r.id for r in runs.values())}-c{crops}"
    enc = compose_config("encode", [f"data={data}", "split=val", f"out={shards}", f"crops={crops}",
                                    *[f"tokenizers.{mod}={r.path}" for mod, r in runs.items()]])
    index = encode_dataset(enc, progress=False)
    tok_bytes = sum(n_val * crops * info["grid"] ** 2 * 2 for info in index["modalities"].values())
    print(f"\nshards: {index['samples']} val images x {crops} crops -> {len(index['shards'])} shard(s), "
          f"{index['bytes'] / 2**20:.2f} MiB ({index['bytes'] / index['samples'] / 1024:.1f} KiB/image, of which "
          f"token arrays {tok_bytes / index['samples'] / 1024:.2f} KiB), encoded in {index['seconds']} s")
    print(f"pattern: {index['pattern']}")


def cli(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if "--official" in argv:  # the released tokenizers' encode and decode throughput (benchmarks/official_tokenizers.py)
        from benchmarks.official_tokenizers import main

        return main([a for a in argv if a != "--official"])
    p = argparse.ArgumentParser(prog="benchmarks.tokenizers", description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/fourm-tok-bench")
    p.add_argument("--train", type=int, default=1024)
    p.add_argument("--val", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--modalities", default="depth,semseg")
    p.add_argument("--crops", type=int, default=4)
    p.add_argument("overrides", nargs="*", help="extra train overrides, e.g. model.codebook_size=512")
    a = p.parse_args(argv)
    run(Path(a.work), a.train, a.val, a.size, a.epochs, a.modalities.split(","), a.crops, a.overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
