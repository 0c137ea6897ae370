"""Training on a (dp, tp) device mesh with PyTorch's own distributed stack.

`train.mesh: {dp: N, tp: M}` under `torchrun --nproc_per_node N*M` lays the processes out as an
N x M `DeviceMesh` (rank = dp_index * M + tp_index, so the tp processes of a replica are
neighbours, as they would be on one node's fast links):

- tensor parallel over `tp` (`parallelize_module`) splits each Llama block by transformers' own
  plan (`config.base_model_tp_plan`): q/k/v and gate/up by output columns (`ColwiseParallel`:
  each process holds n_heads/M heads and d_ff/M MLP units), o and down by input rows
  (`RowwiseParallel`: partial sums all-reduced). Two all-reduces a block forward, two backward.
  Embeddings, norms and the lm head stay whole on every tp process.
- FSDP2 (`fully_shard`) over `dp` shards every parameter, its gradient and its optimizer state
  across the replicas: all-gather before a block's forward and backward, reduce-scatter of its
  gradients after. Each block is its own unit, the rest (embeddings, final norm, head) the root's.

`train.compile` compiles each block's own forward (not the whole model, as without a mesh): the
FSDP hooks that gather and free a block's shards run between compiled blocks, the tensor-parallel
input and output hooks inside them, the split the per-block compile of PyTorch's own large-model
trainers makes (torchtitan). With tp > 1 each batch shape compiles its own graph (see `parallelize`):
train with `sampling: windows` there, or torch falls back to eager after 8 shapes.

Parameters then are DTensors on two meshes (the blocks' on dp x tp, the rest on dp alone), so the
gradient norm is summed per parameter (`clip_grad_norm`) and the optimizer steps each tensor
alone (no foreach kernels across meshes). The whole model is gathered with
`consolidated_state_dict` for the final save; checkpoints are sharded (lmpipe/train/checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lmpipe.core.section import ConfigError
from lmpipe.train.distributed import Dist
from lmpipe.train.params import MeshParams

STYLES = ("colwise", "rowwise")


def build_mesh(spec: MeshParams, dist: Dist, device: torch.device) -> tuple[DeviceMesh, Dist]:
    """The dp x tp mesh over this run's processes, and `dist` with its data-parallel replica."""
    if spec.dp * spec.tp != dist.world:
        raise ConfigError(f"train.mesh = {{dp: {spec.dp}, tp: {spec.tp}}} needs "
                          f"{spec.dp * spec.tp} processes, but torchrun started {dist.world}; "
                          f"expected dp x tp = the world size (--nproc_per_node x --nnodes)")
    mesh = init_device_mesh(device.type, (spec.dp, spec.tp), mesh_dim_names=("dp", "tp"))
    dp = mesh["dp"]
    return mesh, replace(dist, dp_rank=dp.get_local_rank(), dp_world=spec.dp,
                         dp_group=dp.get_group())


def block_plan(model: torch.nn.Module) -> dict:
    """transformers' tensor-parallel plan for one decoder block, as torch parallel styles."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = getattr(model.config, "base_model_tp_plan", None) or {}
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    block = {}
    for pattern, style in plan.items():
        if not pattern.startswith("layers.*.") or style not in styles:
            raise ConfigError(f"train.mesh.tp: {type(model).__name__}'s tensor-parallel plan "
                              f"entry {pattern!r}: {style!r} is not a per-block "
                              f"{' or '.join(STYLES)} split lmpipe applies")
        block[pattern.removeprefix("layers.*.")] = styles[style]()
    if not block:
        raise ConfigError(f"train.mesh.tp: {type(model).__name__} has no tensor-parallel plan "
                          "(config.base_model_tp_plan); expected a Llama")
    return block


def parallelize(model: torch.nn.Module, mesh: DeviceMesh, spec: MeshParams,
                compile_blocks: bool = False) -> torch.nn.Module:
    """Split the blocks over tp, compile each block's forward if asked, then shard the whole over
    dp (in place); the model returned."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    layers = model.model.layers
    if spec.tp > 1:
        plan = block_plan(model)
        for block in layers:
            parallelize_module(block, mesh["tp"], plan)
    if compile_blocks:
        # torch 2.13 does not trace a tensor-parallel block with symbolic shapes (AOT autograd
        # recurses without end through DTensor's backward; seen here), so with tp > 1 a block
        # compiles once per batch shape: one graph with `sampling: windows`
        dynamic = False if spec.tp > 1 else None
        for block in layers:
            # the instance's forward only: state-dict keys stay as they are, hooks stay outside
            block.forward = torch.compile(block.forward, dynamic=dynamic)
    if spec.dp > 1:
        for block in layers:
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    return model


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global gradient norm of sharded and whole parameters alike, and the gradients scaled
    down to `max_norm` when above it (`math.inf`: measure only)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.experimental import implicit_replication

    grads = [p.grad for p in parameters if p.grad is not None]
    squares = []
    for grad in grads:
        # a DTensor's norm is partial over its shards; full_tensor() sums them where needed
        norm = torch.linalg.vector_norm(grad)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2)
    total = torch.stack(squares).sum().sqrt() if squares else torch.zeros(())
    if max_norm != math.inf and torch.isfinite(total):
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        with implicit_replication():
            for grad in grads:
                grad.mul_(scale)
    return total


def consolidated_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer whole, on the CPU (a collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def tensor_parallel_inference(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """Split `model`'s blocks over every process of this torchrun (in place) for generation:
    each process keeps n_heads / world heads, so its KV cache holds only their keys and values
    (lmpipe/eval/kv_buffer.py sizes it from the keys it is given), and the all-reduced logits
    are the same on every process, so a greedy or seeded loop picks the same tokens everywhere.
    Alone, the model is returned as it is."""
    if not dist.enabled:
        return model
    config = model.config
    for key, size in (("num_attention_heads", config.num_attention_heads),
                      ("num_key_value_heads", config.num_key_value_heads),
                      ("intermediate_size", config.intermediate_size)):
        if size % dist.world:
            raise ConfigError(f"tensor parallel over {dist.world} processes: the model's {key} "
                              f"({size}) does not split evenly; expected a process count that "
                              f"divides it")
    from torch.distributed.tensor.parallel import parallelize_module

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.world,), mesh_dim_names=("tp",))
    plan = block_plan(model)
    for block in model.model.layers:
        parallelize_module(block, mesh, plan)
    return model
