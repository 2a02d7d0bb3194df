"""Run under torchrun by the pretraining tests: 4 steps on in-memory samples; rank 0 writes the losses and grad norms.

Arguments: text tokenizer, runs root, output JSON, then config overrides (e.g. distributed.strategy=fsdp)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_samples import make_samples, tiny_config  # noqa: E402

from fourm import runs  # noqa: E402
from fourm.pretrain.data import PretrainData  # noqa: E402
from fourm.distributed import detect  # noqa: E402
from fourm.pretrain.loop import train  # noqa: E402

tokenizer, root, out = sys.argv[1:4]
torch.set_num_threads(1)
cfg = tiny_config(tokenizer, **dict(a.split("=", 1) for a in sys.argv[4:]))
env = detect()
run = runs.open_run(root, cfg)
data = PretrainData(cfg, env, make_samples(12, 0), make_samples(4, 1))
train(cfg, run, stop_after=4, progress=False, data=data)
if env.rank == 0:
    steps = [r for r in run.read_log() if "loss" in r and "step" in r]
    Path(out).write_text(json.dumps({"losses": [r["loss"] for r in steps], "grad_norms": [r["grad_norm"] for r in steps],
                                     "world_size": env.world_size, "run": str(run.path)}))
