"""How the training loop calls the model on a micro-batch: the DDP wrapper, `train.compile`, and
the gradient-sync switch that lets micro-batches before the last accumulate locally.

On one process an objective that is plain tensor math (`compiles_with_model`) is compiled
together with the forward, so the loss fuses into the graph, as nanoGPT's loss sits inside its
compiled model (1.01-1.04x a step at its configuration, bench/compile_step.py). Under DDP the documented
form, the wrapped module compiled, stays; on a mesh each block is compiled on its own
(lmpipe/train/mesh.py `parallelize`), so nothing is compiled here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from lmpipe.data.batching import Batch
from lmpipe.train.distributed import Dist, mesh_replicas
from lmpipe.train.params import TrainParams

Objective = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def wrap_for_data_parallel(model: torch.nn.Module, dist: Dist, device: torch.device,
                           on_mesh: bool) -> torch.nn.Module:
    """DDP around the model when several processes train it without a mesh (a mesh shards the
    model itself); the model as is otherwise."""
    if not dist.enabled or on_mesh:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def step_loss_function(wrapped: torch.nn.Module, objective: Objective, tp: TrainParams,
                       dist: Dist, on_mesh: bool) -> Callable[[Batch], tuple]:
    """`batch -> (loss_sum, parts)`: the objective on the wrapped model, compiled as
    `train.compile` asks and the setup allows."""
    step_loss: Callable[[Batch], tuple] = functools.partial(objective, wrapped)
    if not tp.compile or on_mesh:
        return step_loss
    if getattr(objective, "compiles_with_model", False) and not dist.enabled:
        return torch.compile(step_loss)
    return functools.partial(objective, torch.compile(wrapped))


def gradient_sync(sync: bool, model: torch.nn.Module, wrapped: Any, tp: TrainParams,
                  dist: Dist, on_mesh: bool) -> contextlib.AbstractContextManager:
    """The context for one micro-batch's backward: gradients of a micro-batch before the last
    stay local (DDP's no_sync, FSDP2's requires_gradient_sync, reduce-scattered with the last)."""
    if sync or not dist.enabled:
        if on_mesh and mesh_replicas(tp) > 1:
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if not on_mesh:
        return wrapped.no_sync()
    if mesh_replicas(tp) > 1:
        model.set_requires_gradient_sync(False)
    return contextlib.nullcontext()
