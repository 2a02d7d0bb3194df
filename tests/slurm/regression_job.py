"""A small but real job for exercising the launcher: linear regression with SGD, resumable from its checkpoint.

Entry ``slurm.regression_job:train`` (``fn(config, run_dir)``). Config keys: ``seed``, ``steps``, ``lr``,
``checkpoint_every``, ``step_sleep_s`` (slows steps down so a test can requeue or kill it mid-run),
``fail_at_step`` (raise there), ``init_from`` (a parent run folder whose final weights start this one).
Every mini-batch is drawn from a generator seeded by (seed, step), so a resumed run repeats exactly the steps an
uninterrupted run takes, and ends with bit-identical metrics.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from fourm.runs import Run, open_run

N_SAMPLES, DIM, BATCH = 64, 4, 16
CHECKPOINT = "checkpoint.pt"


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, DIM, generator=g)
    w = torch.randn(DIM, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(N_SAMPLES, 1, generator=g)


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def train(config: dict, run_dir: str) -> dict:
    """Train, resuming from ``run_dir/checkpoint.pt`` when present; writes metrics.json and DONE."""
    run_dir = Path(run_dir)
    run = open_run(run_dir.parent, config)
    if run.path.resolve() != run_dir.resolve():
        raise ValueError(f"run_dir {run_dir} is not the run store folder of this config ({run.path}); "
                         "name run folders <root>/fourm.runs.run_id(config)")
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every restart
    seed, steps = int(config.get("seed", 0)), int(config.get("steps", 40))
    every, sleep_s = int(config.get("checkpoint_every", 5)), float(config.get("step_sleep_s", 0.0))
    x, y = _data(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(DIM, 1)
    if config.get("init_from"):
        parent = Run(config["init_from"])
        if not parent.done:
            raise RuntimeError(f"init_from={parent.path} is not DONE: this job must run after its parent")
        with torch.no_grad():
            model.weight.copy_(torch.tensor([parent.metrics["weight"]]))
            model.bias.fill_(parent.metrics["bias"])
        run.log(event="init_from", parent=str(parent.path),
                parent_done_at=(parent.path / "DONE").stat().st_mtime, started_at=time.time())
    opt = torch.optim.SGD(model.parameters(), lr=float(config.get("lr", 0.05)), momentum=0.9)

    ckpt, start = run_dir / CHECKPOINT, 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        run.log(event="resume", step=start, restarts=os.environ.get("SLURM_RESTART_COUNT", "0"))
        print(f"resumed from {ckpt} at step {start}", flush=True)
    else:
        run.log(event="start")
    for step in range(start, steps):
        if step == config.get("fail_at_step"):
            raise RuntimeError(f"fail_at_step={step} (asked for by the config)")
        idx = torch.randint(N_SAMPLES, (BATCH,), generator=torch.Generator().manual_seed(seed * 100_003 + step))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            _save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1})
            run.log(step=step + 1, loss=loss.item())
        print(f"step {step + 1}/{steps} loss {loss.item():.6f}", flush=True)
        if sleep_s:
            time.sleep(sleep_s)
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(x), y).item()
    metrics = {"loss": final, "weight": model.weight[0].tolist(), "bias": model.bias.item(), "steps": steps}
    run.write_metrics(metrics)
    run.log(event="done", loss=final)
    run.mark_done()
    return metrics
