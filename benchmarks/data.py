"""The streaming pretraining reader: throughput per worker count, and a pretraining process's memory and time to its
first step on two datasets 16x apart.

    fourm-bench bench data [--samples 2000] [--scale 16] [--steps 20] [--batch 16] [--out /tmp/fourm_bench_data]

Writes two datasets in the official per-modality layout (5 token modalities as int16 ``[1, 196]``, a JPEG for the RGB
input, a caption, an official detection JSON, crop settings; 1,000 samples per shard), then reports:

* the reader's samples/s and tokens/s (input + target budget per sample) with 0, 1 and 2 DataLoader workers, and the
  ratio to the samples/s the nano train step consumes (measured in the same run);
* for each dataset size, in a fresh process: seconds from start to the first optimizer step and peak RSS after
  ``--steps`` steps, and the ratios large / small (flat memory: ~1.0);
* what determinism costs: masking each row with its own seeded generator vs one batched call per micro-batch.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

TOKEN_MODS = ["tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224", "tok_clip@224"]
MODS = ["rgb@224", *TOKEN_MODS, "caption", "det"]
FOLDERS = [*TOKEN_MODS, "crop_settings", "rgb", "caption", "det"]
PER_SHARD = 1000
TEXT_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_4m" / "text_tokenizer_4m_wordpiece_30k.json"
CAPTIONS = ["a small red bicycle leaning against a white wall", "two dogs running on a sandy beach at sunset",
            "an old man in a blue coat reading a newspaper on a park bench", "three zebras grazing in tall grass"]


def _jpeg() -> bytes:
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256]
    img = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: Path, n: int, seed: int = 0) -> str:
    """``n`` samples in the official per-modality layout under ``root``; returns the data path (idempotent)."""
    from fourm import modalities as M
    from fourm.tokenizers import layout
    from fourm.tokenizers.shards import npy_bytes

    shards = (n + PER_SHARD - 1) // PER_SHARD
    path = layout.data_path(root, "wds", FOLDERS, shards)
    if (root / "DONE").exists():
        return path
    rng = np.random.default_rng(seed)
    jpeg = _jpeg()
    crops = npy_bytes(np.array([[0, 0, 256, 256, 0]], dtype=np.int32))
    det = json.dumps(layout.det_json([[20, 30, 120, 140, "person"], [100, 90, 250, 200, "dog"]], 256, 256)).encode()
    for s in range(shards):
        samples = []
        for i in range(s * PER_SHARD, min(n, (s + 1) * PER_SHARD)):
            files = {m: ("npy", npy_bytes(layout.official_tokens(
                rng.integers(0, M.get(m).vocab_size, (1, 14, 14)), M.get(m).vocab_size))) for m in TOKEN_MODS}
            files.update({"crop_settings": ("npy", crops), "rgb": ("jpg", jpeg),
                          "caption": ("txt", CAPTIONS[i % 4].encode()), "det": ("json", det)})
            samples.append((f"{i:09d}", files))
        layout.write_sample_files(root, "wds", layout.shard_name(s), samples)
    (root / "DONE").write_text(path)
    return path


def config(path: str, batch: int, workers: int = 0, extra: list[str] | None = None) -> dict:
    from fourm.pretrain.loop import resolve

    return resolve(["model=nano", f"data.train={path}", f"data.val={path}", f"data.text_tokenizer={TEXT_TOKENIZER}",
                    "alphas.spec=mix_mod7_all2all_rgb2all_a0.5", f"model.domains_in=[{','.join(MODS)}]",
                    f"model.domains_out=[{','.join(MODS[1:])}]", f"batch_size={batch}", f"num_workers={workers}",
                    "val.every_steps=100000", "checkpoint.every_steps=100000", *(extra or [])])


def reader_rate(path: str, batch: int, workers: int, micro_steps: int) -> float:
    """Samples/s of the reader alone (after its first batch: worker start-up excluded)."""
    from fourm.distributed import DistEnv
    from fourm.pretrain.stream import StreamingData

    data = StreamingData(config(path, batch, workers), DistEnv())
    data.train_batch(0, 0)
    t = time.perf_counter()
    for m in range(1, micro_steps + 1):
        data.train_batch(m, 0)
    rate = micro_steps * batch / (time.perf_counter() - t)
    data.close()
    return rate


def masking_cost(path: str, batch: int, reps: int = 5) -> tuple[float, float]:
    """Seconds to mask one micro-batch row by row (each row its own generator: one stream per row) and in one
    batched call (one stream)."""
    from fourm.distributed import DistEnv
    from fourm.pretrain.data import collate
    from fourm.pretrain.stream import StreamingData
    from fourm.tokenizers import layout

    data = StreamingData(config(path, batch), DistEnv())
    src = data.train_src
    raws = [r for _, r in zip(range(batch), layout.read_unit(src, src.units[0], data.modalities))]
    g = torch.Generator().manual_seed(0)
    samples = [data.decode(r, g) for r in raws]
    t = time.perf_counter()
    for _ in range(reps):
        for i, s in enumerate(samples):
            data.masking(collate([s], data.modalities), generator=torch.Generator().manual_seed(i))
    per_row = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        data.masking(collate(samples, data.modalities), generator=torch.Generator().manual_seed(0))
    return per_row, (time.perf_counter() - t) / reps


def child(path: str, batch: int, steps: int, out: str) -> None:
    """One pretraining process: time to its first step, its train-step rate and its peak RSS."""
    t0 = time.time()
    from fourm import runs
    from fourm.pretrain.loop import train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = config(path, batch, 0, ["_resume=never"])
    import shutil

    shutil.rmtree(Path(out).with_suffix(""), ignore_errors=True)
    run = runs.open_run(Path(out).with_suffix(""), cfg)
    train(cfg, run, stop_after=steps, progress=False)
    from datetime import datetime

    times = [datetime.fromisoformat(r["time"]).timestamp() for r in run.read_log() if "loss" in r and "step" in r]
    Path(out).write_text(json.dumps({"first_step_s": times[0] - t0, "train_samples_per_s": batch * (len(times) - 1) /
                                     (times[-1] - times[0]), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fourm-bench bench data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000, help="the small dataset; the large one is --scale times it")
    ap.add_argument("--scale", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="pretraining steps per process")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro-steps", type=int, default=40, help="batches timed per reader measurement")
    ap.add_argument("--out", default="/tmp/fourm_bench_data")
    ap.add_argument("--child", nargs=2, metavar=("PATH", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.batch, args.steps, args.child[1])
        return 0
    out = Path(args.out)
    sizes = {"small": args.samples, "large": args.samples * args.scale}
    paths = {}
    for name, n in sizes.items():
        t = time.perf_counter()
        paths[name] = write_dataset(out / f"{name}_{n}", n)
        print(f"dataset {name}: {n} samples ({time.perf_counter() - t:.1f} s to write or find)")
    procs = {}
    for name, path in paths.items():
        res = out / f"{name}_run.json"
        subprocess.run([sys.executable, "-m", "benchmarks.data", "--child", path, str(res), "--batch", str(args.batch),
                        "--steps", str(args.steps)], check=True, cwd=Path(__file__).resolve().parents[1])
        procs[name] = json.loads(res.read_text())
    train_rate = procs["small"]["train_samples_per_s"]
    from fourm.pretrain.loop import resolve

    budget = resolve(["model=nano"])["budget"]
    tokens = budget["num_input_tokens"] + budget["num_target_tokens"]
    print(f"\nreader (large dataset, batch {args.batch}, {args.micro_steps} micro-steps)")
    print(f"{'workers':>8} {'samples/s':>10} {'tokens/s':>10} {'x nano step':>12}")
    for w in (0, 1, 2):
        rate = reader_rate(paths["large"], args.batch, w, args.micro_steps)
        print(f"{w:>8} {rate:>10.0f} {rate * tokens:>10.0f} {rate / train_rate:>12.2f}")
    print(f"nano train step consumes {train_rate:.1f} samples/s")
    print(f"\npretraining process, {args.steps} steps of batch {args.batch}")
    print(f"{'dataset':>8} {'samples':>8} {'first step s':>13} {'peak RSS MB':>12}")
    for name, n in sizes.items():
        p = procs[name]
        print(f"{name:>8} {n:>8} {p['first_step_s']:>13.2f} {p['peak_rss_mb']:>12.0f}")
    s, big = procs["small"], procs["large"]
    print(f"large / small: first step x{big['first_step_s'] / s['first_step_s']:.2f}, "
          f"peak RSS x{big['peak_rss_mb'] / s['peak_rss_mb']:.3f}")
    per_row, batched = masking_cost(paths["small"], args.batch)
    print(f"\ndeterminism: masking a micro-batch of {args.batch} row by row {per_row * 1e3:.1f} ms vs batched "
          f"{batched * 1e3:.1f} ms (x{per_row / batched:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
