"""Job shapes from the recipe: nodes x tasks x per-rank batch x accumulation that keep a recipe's global batch.

A recipe states its global batch (what is computed: ``train.batch_size``, pretraining's ``batch_size``) and the
hardware it was run on (``_runtime.reference_gpus`` of a transfer recipe, ``distributed.reference_gpus`` of
pretraining): the reference per-GPU batch, ``global / reference_gpus``, is what one GPU is known to hold. Given the
GPUs of a node and the nodes one job may take, :func:`job_shape` picks the most ranks (one per GPU) up to the
reference that divide the global batch, and accumulates gradients when fewer ranks than the reference would put more
than the reference per-GPU batch on a GPU. Tasks that cannot accumulate (the mm runners) get an error instead, naming
what to change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class ShapeError(ValueError):
    """A recipe whose global batch cannot be kept on the given hardware; the message says what to change."""


@dataclass(frozen=True)
class Shape:
    nodes: int
    tasks_per_node: int  # one rank per GPU
    per_rank_batch: int  # images (samples) in one forward/backward of one rank
    accum: int  # forward/backward passes per optimizer update
    global_batch: int
    reference_gpus: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        return (f"{self.nodes} node(s) x {self.tasks_per_node} GPU(s), {self.per_rank_batch}/rank x {self.accum} accum"
                f" = {self.global_batch} (reference {self.reference_gpus} GPUs)")


def job_shape(global_batch: int, reference_gpus: int, gpus_per_node: int, max_nodes: int, *, what: str,
              can_accumulate: bool = True, max_accum: int = 64) -> Shape:
    """The shape of one job (see the module docstring); ``what`` names the recipe in errors."""
    if gpus_per_node < 1 or max_nodes < 1:
        raise ShapeError(f"{what}: --gpus-per-node and --max-nodes must be >= 1 (got {gpus_per_node}, {max_nodes})")
    reference_gpus = max(1, int(reference_gpus))
    if global_batch % reference_gpus:
        raise ShapeError(f"{what}: the recipe's global batch {global_batch} does not split over its reference "
                         f"{reference_gpus} GPUs; fix the recipe's reference_gpus")
    per_gpu = global_batch // reference_gpus
    available = gpus_per_node * max_nodes
    for ranks in range(min(reference_gpus, available), 0, -1):
        if global_batch % ranks:
            continue
        if ranks > gpus_per_node and ranks % gpus_per_node:
            continue  # whole nodes only beyond one node
        per_rank = global_batch // ranks
        accum = math.ceil(per_rank / per_gpu)
        while per_rank % accum:
            accum += 1
        if accum > 1 and not can_accumulate:
            raise ShapeError(
                f"{what}: global batch {global_batch} at {per_gpu} per GPU needs {reference_gpus} GPUs; "
                f"{ranks} GPUs ({max_nodes} node(s) x {gpus_per_node}) would put {per_rank} on a GPU and this task "
                f"cannot accumulate gradients. Use --max-nodes {math.ceil(reference_gpus / gpus_per_node)}, or, if "
                f"one of your GPUs holds {per_rank}, say so with reference_gpus={ranks}")
        if accum > max_accum:
            continue
        nodes = max(1, ranks // gpus_per_node) if ranks > gpus_per_node else 1
        return Shape(nodes, ranks // nodes, per_rank // accum, accum, global_batch, reference_gpus)
    raise ShapeError(f"{what}: no number of GPUs up to {available} splits the global batch {global_batch} "
                     f"with at most {max_accum} accumulation steps; change --gpus-per-node/--max-nodes")
