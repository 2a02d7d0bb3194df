"""Run under torchrun by test_stream.py: the streaming reader on files, straight (4 steps) and resumed (2 + 2); rank 0
writes both runs' losses.

Arguments: text tokenizer, runs root, output JSON, train data path, val data path."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_samples import tiny_config  # noqa: E402

from fourm import runs  # noqa: E402
from fourm import distributed as D  # noqa: E402
from fourm.pretrain.loop import train  # noqa: E402

tokenizer, root, out, train_path, val_path = sys.argv[1:6]
torch.set_num_threads(1)
cfg = tiny_config(tokenizer, **{"data.train": train_path, "data.val": val_path, "checkpoint.every_steps": 2,
                                "model.domains_in": "[rgb@224,tok_depth@224,tok_semseg@224,caption,det]",
                                "model.domains_out": "[tok_depth@224,tok_semseg@224,caption,det]"})
env = D.setup()  # one process group for the three runs
losses = {}
for name, stops in (("straight", [4]), ("resumed", [2, 4])):
    run = runs.open_run(Path(root) / name, cfg)
    for stop in stops:
        train(cfg, run, stop_after=stop, progress=False)
    losses[name] = [r["loss"] for r in run.read_log() if "loss" in r and "step" in r]
if env.rank == 0:
    Path(out).write_text(json.dumps({**losses, "world_size": env.world_size}))
D.shutdown(env)
