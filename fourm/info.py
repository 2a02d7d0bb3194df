"""`fourm-bench info`: what this environment can run."""
from __future__ import annotations

import importlib
import json

from fourm.configs import parse_cli


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception as e:  # a broken install is information here, not a crash
        return f"unavailable ({type(e).__name__}: {e})"


def collect() -> dict:
    """Versions and capabilities as a dict (also what tests assert on)."""
    import torch

    info = {name: _version(mod) for name, mod in [
        ("fourm", "fourm"), ("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"),
        ("mmengine", "mmengine"), ("mmcv", "mmcv"), ("mmdet", "mmdet"), ("mmseg", "mmseg"), ("submitit", "submitit"),
    ]}
    try:
        from mmcv.ops import nms  # compiled ops; a pure-python mmcv fails here

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        info["mmcv_ops"] = f"loaded (nms kept {keep.tolist()})"
    except Exception as e:
        info["mmcv_ops"] = f"NOT loaded ({type(e).__name__}: {e})"
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["threads"] = torch.get_num_threads()
    return info


def cli(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fourm-bench info", description=__doc__)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parse_cli(p, argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0 if str(info["mmcv_ops"]).startswith("loaded") else 1
