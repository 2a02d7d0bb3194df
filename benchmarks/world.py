"""World rendering throughput at 224 px, against the same tracer called one pixel at a time (measured in this run).

    python -m benchmarks.world [--size 224] [--images 40] [--baseline-pixels 1500]

The per-pixel baseline is too slow to run on whole images, so it traces the first `--baseline-pixels` pixels of
each of a few scenes and its images/s is extrapolated from its time per pixel (printed as such).
"""
from __future__ import annotations

import argparse
import tempfile
import time

from fourm.data import world


def measure(size: int = 224, images: int = 40, baseline_images: int = 2, baseline_pixels: int = 1500) -> dict:
    """images/s of render_scene, of generate (render + PNG writes), and of the per-pixel baseline (extrapolated)."""
    world.render_scene(0, 0, size)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    for i in range(images):
        world.render_scene(0, i, size)
    render_s = (time.perf_counter() - t0) / images

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        world.generate(tmp, num=images, size=size, seed=0)
        write_s = (time.perf_counter() - t0) / images

    t0 = time.perf_counter()
    for i in range(baseline_images):
        world.render_scene_per_pixel(0, i, size, pixels=baseline_pixels)
    per_pixel_s = (time.perf_counter() - t0) / (baseline_images * baseline_pixels)
    naive_s = per_pixel_s * size * size
    return {"size": size, "render_img_s": 1 / render_s, "generate_img_s": 1 / write_s, "naive_img_s": 1 / naive_s,
            "speedup": naive_s / render_s}


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.world", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--baseline-pixels", type=int, default=1500)
    args = p.parse_args(argv)
    r = measure(args.size, args.images, baseline_pixels=args.baseline_pixels)
    print(f"world @ {r['size']} px: render {r['render_img_s']:.1f} img/s, render+write 4M layout "
          f"{r['generate_img_s']:.1f} img/s (target >= 50 img/s render)")
    print(f"naive per-pixel loop (same tracer, extrapolated from {args.baseline_pixels} px/scene): "
          f"{r['naive_img_s']:.4f} img/s -> vectorised is {r['speedup']:.0f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
