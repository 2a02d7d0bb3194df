"""Planning a 1,000-point sweep: `fourm-bench sweep GRID --dry-run` (expand, resolve and validate every point, find
DONE/queued runs, print the plan) vs the naive route, one hydra compose per pretraining config
(``fourm.pretrain.loop.resolve``) and one per transfer config (``transfer.run.make_config``).

    python -m benchmarks.sweep [--points 1000] [--baseline-points 40]

The grid: nano pretraining, 8 alphas x 5 input budgets x N seeds (N rounds up to ``--points`` points), each evaluated
on the tiny
IN1K fine-tune (so 2 x points runs). The baseline resolves only ``--baseline-points`` points (it is slow); the ratio
compares points per second.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

ALPHAS = ["mod7_all2all_a0.1", "mod7_all2all_a0.2", "mod7_all2all_a0.5", "mod7_all2all_a1.0", "mod7_rgb2all_a0.5",
          "mix_mod7_all2all_rgb2all_a0.5", "mix_mod7_all2all_rgb2dense_a0.5", "mix_mod7_caption_bias_a0.2_a1.0"]


def grid_text(points: int) -> str:
    """A grid of ``points`` points: alphas x input budget x seeds (seeds fill up the count)."""
    budgets = [32, 64, 96, 128, 160]
    seeds = max(1, -(-points // (len(ALPHAS) * len(budgets))))
    return f"""
name: bench
params: {{data_root: /datasets}}
base: {{model: nano, batch_size: 8, data.text_tokenizer: /data/tok.json}}
evaluate: {{profile: tiny, tasks: [in1k], seeds: [0], overrides: {{data_root: "${{params.data_root}}"}}}}
grid:
  product:
    - {{axis: alphas, key: alphas.spec, values: {ALPHAS}}}
    - {{axis: input_tokens, key: budget.num_input_tokens, values: {budgets}}}
    - {{axis: seed, key: seed, values: {list(range(seeds))}}}
"""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--baseline-points", type=int, default=40)
    args = p.parse_args([] if argv is None else argv)

    from ablations.grid import expand, hydra_value, load_grid
    from fourm.pretrain.loop import resolve
    from ablations.sweep import cli
    from transfer.run import make_config

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(grid_text(args.points))
        n_points = len(expand(load_grid(path)))
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = cli([str(path), "--dry-run", "--launcher", "local", "--runs-root", f"{tmp}/runs",
                      "--sweep-dir", f"{tmp}/sweep"])
        ours = time.perf_counter() - t0
        assert rc == 0, out.getvalue()
        planned = out.getvalue()
        n_ours = n_points

        points = expand(load_grid(path))[: args.baseline_points]
        t0 = time.perf_counter()
        for pt in points:
            cfg = resolve([f"{k}={hydra_value(v)}" for k, v in pt.overrides])
            make_config("in1k", "tiny", [f"init={tmp}/runs/pretrain/x/model.safetensors", "data_root=/datasets",
                                         "model=" + cfg["model"]["name"], "seed=0"])
        naive = time.perf_counter() - t0

    ours_rate, naive_rate = n_ours / ours, len(points) / naive
    print(planned.rstrip())
    print(f"\nsweep --dry-run: {n_ours} points ({2 * n_ours} runs) in {ours:.2f} s = {ours_rate:.0f} points/s "
          f"(expand + resolve + validate + plan, one process)")
    print(f"naive (hydra compose per config): {len(points)} points in {naive:.2f} s = {naive_rate:.1f} points/s "
          f"-> {n_ours / naive_rate:.0f} s for {n_ours} points")
    print(f"ratio: {ours_rate / naive_rate:.1f}x")
    return {"points": n_ours, "seconds": ours, "naive_points_per_s": naive_rate, "ratio": ours_rate / naive_rate}


if __name__ == "__main__":
    main(sys.argv[1:])
