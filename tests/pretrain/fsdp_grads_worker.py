"""Run under torchrun by test_scale.py: one step's gradients of the nano under DDP and under FSDP (a sharding, with or
without activation checkpointing) on the same batch; rank 0 writes the worst difference and both gradient norms.

Arguments: text tokenizer, output JSON, FSDP sharding, activation checkpointing (true/false)."""
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_samples import make_samples, tiny_config  # noqa: E402

from fourm import distributed as D  # noqa: E402
from fourm.pretrain import loop as L  # noqa: E402
from fourm.pretrain.data import PretrainData  # noqa: E402

tokenizer, out_path, sharding, checkpointing = sys.argv[1:5]
torch.set_num_threads(1)
env = D.setup()
grads, norms = {}, {}
for strategy in ("ddp", "fsdp"):
    cfg = tiny_config(tokenizer, **{"distributed.strategy": strategy, "distributed.fsdp_sharding": sharding,
                                    "distributed.activation_checkpointing": checkpointing if strategy == "fsdp" else "false"})
    torch.manual_seed(cfg["seed"])
    model = L.build_model(cfg)
    model.checkpoint_blocks = L.activation_checkpointing(cfg, torch.device("cpu"))
    train_model = L.wrap(model, cfg, env, torch.device("cpu"))
    data = PretrainData(cfg, env, make_samples(12, 0), make_samples(4, 1))
    torch.default_generator.manual_seed(L.step_seed(cfg["seed"], 0, 0, stream=1 + env.rank))
    batch = data.train_batch(0, 0, L.step_seed(cfg["seed"], 0, 0, stream=2))
    loss, _ = train_model(batch, 32, 32, loss_type=cfg["loss_type"], count_reduce=D.count_reducer(env),
                          rng=random.Random(L.step_seed(cfg["seed"], 0, 0, stream=3)))
    loss.backward()
    if strategy == "fsdp":
        L.sync_replicated_grads(model, env)
    norms[strategy] = float(L.clip_grad_norm(model, float("inf"), env, strategy == "fsdp"))
    grads[strategy] = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                       for n, p in model.named_parameters() if p.grad is not None}
if env.rank == 0:
    a, b = grads["ddp"], grads["fsdp"]
    missing = sorted(k for k in set(a) ^ set(b) if (a.get(k, b.get(k)) != 0).any())
    worst = max((a[k] - b[k]).abs().max().item() for k in set(a) & set(b))
    f64 = float(torch.nn.utils.get_total_norm([g.double() for g in a.values()]))
    Path(out_path).write_text(json.dumps({"worst": worst, "missing": missing, "norms": norms, "norm_f64": f64,
                                          "params": len(a)}))
D.shutdown(env)
