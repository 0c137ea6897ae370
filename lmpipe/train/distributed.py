"""Data parallelism: the process group `torchrun` sets up, and the device each process uses.

Launched plainly, a run is one process (rank 0 of 1) and nothing here does anything. Launched
with `torchrun --nproc_per_node N`, each process joins a process group (gloo on CPU, nccl on CUDA),
takes its share of every global batch, and DDP averages gradients. Only rank 0 writes files.
On a (dp, tp) mesh (lmpipe/train/mesh.py) the batch is shared by the dp replicas only: the tp
processes of one replica see the same rows, so data counts are summed over the replica group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from lmpipe.data.batching import Batch
from lmpipe.train.params import TrainParams


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # on a mesh: this process's data-parallel replica, their count and their process group
    # (None: every process is a replica of its own, as under DDP)
    dp_rank: int | None = None
    dp_world: int | None = None
    dp_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def data_rank(self) -> int:
        """Which share of every global batch this process reads."""
        return self.rank if self.dp_rank is None else self.dp_rank

    @property
    def data_world(self) -> int:
        """How many shares a global batch is cut into."""
        return self.world if self.dp_world is None else self.dp_world

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (identity when alone)."""
        if self.enabled:
            value = value.clone()
            torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
        return value

    def data_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over the data shares: over every process, or on a mesh over the
        replicas (the tp processes of one replica hold the same figures)."""
        if self.dp_world is None:
            return self.all_sum(value)
        if self.dp_world > 1:
            value = value.clone()
            torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM, group=self.dp_group)
        return value

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def resolve_device(name: str, dist: Dist) -> torch.device:
    """`auto` picks this process's GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device = {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def init_distributed() -> Dist:
    """Join the process group described by torchrun's environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    return Dist(rank=torch_dist.get_rank(), world=world,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def micro_batches(batches, tp: TrainParams, step: int, dist: Dist) -> list[Batch]:
    """This process's micro-batches of the global batch of `step`.

    The global batch (batch_size * grad_accum rows) is the same whatever the number of processes
    and accumulation steps: process r takes rows r, r + world, ...; micro-batch i of those takes
    every grad_accum-th row from i. So DDP and accumulation reproduce one big batch exactly.
    On a mesh the shares go by data-parallel replica: a replica's tp processes read the same rows.
    """
    mine = batches(step)
    if dist.data_world > 1:
        mine = mine.rows(slice(dist.data_rank, None, dist.data_world))
    if tp.grad_accum == 1:
        return [mine]
    return [mine.rows(slice(i, None, tp.grad_accum)) for i in range(tp.grad_accum)]


def mesh_replicas(tp: TrainParams) -> int:
    """The data-parallel replicas of a mesh run (1 without a mesh)."""
    return tp.mesh.dp if tp.mesh is not None else 1
