"""One distributed bootstrap for every job (pretraining, ImageNet-1K, the mmseg and mmdet runners).

The environment comes from torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) or from a
SLURM job step (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first host of the nodelist as master, a
port derived from the job id); :func:`setup` starts the process group (gloo on CPU, NCCL on GPU) and exports the
torchrun variables, so third-party code that reads them (mmengine's ``launcher="pytorch"``) sees the same ranks.
Only rank 0 writes run folders.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0].split("[")[0]


def detect(environ: dict | None = None) -> DistEnv:
    """Rank/world size from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
                       int(env.get("MASTER_PORT", 20000 + job % 20000)), "slurm")
    return DistEnv()


def init(env: DistEnv, backend: str | None = None) -> None:
    """Start the process group (nccl on GPU, gloo on CPU) when running on several processes."""
    if not env.distributed or dist.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size)


def setup(env: DistEnv | None = None) -> DistEnv:
    """Detect the environment, start the process group when there are several ranks, export the torchrun variables
    (and allow TF32 matmuls on CUDA)."""
    env = env or detect()
    if torch.cuda.is_available():  # TF32 tensor cores for the fp32 matmuls and convolutions left outside autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if env.distributed:
        os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
        init(env)
    return env


class BatchSplitError(ValueError):
    """A global batch that the ranks (x accumulation steps) cannot split evenly."""


def split_batch(global_batch: int, ranks: int, accum: int = 1, key: str = "train.batch_size") -> int:
    """The per-rank batch of one forward/backward that keeps ``global_batch`` = per-rank x ranks x ``accum``."""
    if accum < 1 or global_batch % (ranks * accum):
        raise BatchSplitError(f"{key}={global_batch} (the global batch) must be a multiple of {ranks} ranks x "
                              f"{accum} accumulation steps; change the accumulation steps or the number of GPUs")
    return global_batch // (ranks * accum)


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The sum over ranks (the value itself when running alone)."""
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return value


def count_reducer(env: DistEnv):
    """For FourM.losses: sum per-modality token counts over ranks (None when running alone)."""
    if not env.distributed:
        return None

    def reduce(counts: torch.Tensor):
        counts = counts.clone()
        dist.all_reduce(counts)
        return counts, env.world_size

    return reduce


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        # every rank's collectives finish before any rank tears its group down: a rank that destroys the group while
        # another still talks to it can abort in the communication library's threads
        dist.barrier()
        dist.destroy_process_group()
