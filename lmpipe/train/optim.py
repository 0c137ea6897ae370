"""Optimizers: one place that turns `train.optimizer` and its knobs into a torch optimizer.

Every optimizer gets the same two parameter groups: weight decay on the weight matrices of linear
layers only; none on norms, biases, embeddings and the output head (a tied head is the embedding
matrix and appears once). The learning rate set here is the base rate; the training loop
overwrites each group's `lr` every step from `lmpipe.train.schedule.lr_at`.
"""

from __future__ import annotations

import torch

from lmpipe.train.adalomo import build_adalomo
from lmpipe.train.muon import MuonWithAdamW
from lmpipe.train.params import TrainParams

OPTIMIZERS = ("adamw", "sgd", "adafactor", "lion", "muon", "adamw8bit", "adalomo")


def set_learning_rate(optimizer, lr: float) -> None:
    """Write `lr` into every parameter group, in place where the optimizer keeps it as a tensor:
    torchao's low-bit optimizers compile their step with `lr` a tensor and refuse a float
    written over it."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def state_bytes(optimizer) -> int:
    """Bytes of the optimizer's per-parameter state (moments, momentum buffers, factored second
    moments, step counters): the memory it adds beyond the weights and their gradients. A tensor
    subclass (torchao's 8-bit moments: codes, block scales and the code map) counts the tensors it
    is made of, a tensor shared by several states once; an optimizer made of several
    (lmpipe/train/muon.py) counts each. On a device mesh: this process's shards."""
    parts = getattr(optimizer, "optimizers", None) or [optimizer]
    # by id, holding each tensor: a DTensor's local view is a new object, whose id could
    # otherwise be reused by the next one and wrongly count as seen
    seen: dict[int, torch.Tensor] = {}
    return sum(_tensor_bytes(value, seen) for part in parts for state in part.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def _tensor_bytes(tensor: torch.Tensor, seen: dict[int, torch.Tensor]) -> int:
    if hasattr(tensor, "to_local") and hasattr(tensor, "device_mesh"):
        tensor = tensor.to_local()  # a DTensor on a mesh: the shard this process holds
    if type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):
        inner, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in inner)
    if id(tensor) in seen:
        return 0
    seen[id(tensor)] = tensor
    return tensor.numel() * tensor.element_size()


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[decay group, no-decay group] over the model's unique trainable parameters.

    Parameters are given as (name, tensor) pairs, so torch records the names in each group's
    `param_names` (handy in tests and when debugging a checkpoint). Empty groups are dropped.
    """
    matrices, rest = _matrices_and_rest(model)
    groups = [{"params": matrices, "weight_decay": weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _matrices_and_rest(model: torch.nn.Module) -> tuple[list, list]:
    """(name, parameter) pairs: the hidden linear layers' weight matrices (not the embeddings or
    the output head), and every other trainable parameter."""
    head_ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            head_ids.update(id(p) for p in module.parameters())
    linear_weight_ids = {
        id(module.weight) for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"
    }
    matrices, rest = [], []
    # named_parameters() yields a shared (tied) tensor once, under its first name.
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = (param.dim() >= 2 and id(param) in linear_weight_ids
                     and id(param) not in head_ids)
        (matrices if is_matrix else rest).append((name, param))
    return matrices, rest


def _adamw_kernel(params: list[torch.Tensor]) -> dict:
    """fused=True where torch has a fused AdamW for every parameter's device, else torch's choice.

    Measured here (torch 2.13 CPU, 2 threads, Llama d_model=128, 4 layers, 1.08M params, batch
    16x128 tokens, real gradients, kernels interleaved): optimizer.step median fused 1.4 ms,
    foreach 3.4 ms, single-tensor 3.1 ms (fwd+bwd 127 ms). Fused wins; foreach is no faster than
    the plain loop on CPU (torch has no native CPU foreach kernels), so the fallback leaves
    `foreach` to torch, which picks it on devices with native foreach kernels (CUDA).
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        fused_devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # private helper; be conservative if it moves
        fused_devices = {"cpu", "cuda"}
    fusable = all(p.device.type in fused_devices and p.is_floating_point() for p in params)
    return {"fused": True} if fusable and params else {}


def _lion():
    try:
        from lion_pytorch import Lion
    except ImportError:
        raise ImportError("optimizer 'lion' needs the lion extra: pip install 'lmpipe[lion]'") from None
    return Lion


def _adamw8bit():
    try:
        from torchao.optim import AdamW8bit
    except ImportError:
        raise ImportError("optimizer 'adamw8bit' needs the lowbit extra: "
                          "pip install 'lmpipe[lowbit]'") from None
    return AdamW8bit


def build_optimizer(model: torch.nn.Module, tp: TrainParams) -> torch.optim.Optimizer:
    """The optimizer named by `tp.optimizer`, over `parameter_groups(model, tp.weight_decay)`.

    adamw:     torch AdamW, betas (beta1, beta2), decoupled decay (p -= lr * wd * p).
    sgd:       torch SGD, momentum beta1, no Nesterov; weight decay is L2 added to the gradient.
    adafactor: torch Adafactor (factored second moment, no first moment: beta1/beta2 unused,
               beta2_decay -0.8). Its lr is a *relative* step: each update is
               min(lr, 1/sqrt(t)) * max(1e-3, RMS(param)) in size. Decay is p -= lr * wd * p.
    lion:      lion-pytorch's Lion, betas (beta1, beta2), p -= lr * wd * p. Sign updates are
               larger than Adam's: the Lion paper uses a 3-10x smaller lr and 3-10x larger wd.
    muon:      torch Muon (momentum beta1, Nesterov) on the decay group, the hidden linear
               matrices, and AdamW on the rest (lmpipe/train/muon.py); Muon's step is scaled to
               AdamW's update RMS (Moonshot's `match_rms_adamw`), so lr and wd carry over.
    adamw8bit: torchao's AdamW8bit (CPU and GPU): both moments kept in 8 bits, blockwise
               (256 values a scale), a quarter of AdamW's state memory; only tensors of at least
               4,096 values that split into whole blocks are quantized, smaller ones keep fp32
               moments. Its step is compiled (torch.compile) at the first step of each shape.
    adalomo:   lomo-optim's AdaLomo, the update fused into backward (lmpipe/train/adalomo.py):
               no gradients kept, Adafactor's factored second moment, a relative lr like
               adafactor's (lr * max(1e-3, RMS(param))); the loop calls its `fused_step`.
    """
    groups = parameter_groups(model, tp.weight_decay)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    params = [p for g in groups for _, p in g["params"]]
    name = tp.optimizer
    # on a device mesh the parameters are DTensors on two meshes (lmpipe/train/mesh.py), which
    # one multi-tensor kernel cannot take: each tensor steps alone
    alone = {"foreach": False} if tp.mesh is not None else None
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=tp.lr, betas=(tp.beta1, tp.beta2),
                                 **(alone or _adamw_kernel(params)))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=tp.lr, momentum=tp.beta1, nesterov=False,
                               **(alone or {}))
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=tp.lr)
    if name == "lion":
        return _lion()(groups, lr=tp.lr, betas=(tp.beta1, tp.beta2))
    if name == "adamw8bit":
        return _adamw8bit()(groups, lr=tp.lr, betas=(tp.beta1, tp.beta2))
    if name == "adalomo":
        decayed = {id(p) for g in groups if g["weight_decay"] > 0 for _, p in g["params"]}
        return build_adalomo(model, tp.lr, tp.weight_decay, decayed)
    if name == "muon":
        matrices, rest = _matrices_and_rest(model)
        return MuonWithAdamW(matrices, rest, lr=tp.lr, weight_decay=tp.weight_decay,
                             momentum=tp.beta1, betas=(tp.beta1, tp.beta2),
                             **_adamw_kernel([p for _, p in rest]))
    raise ValueError(f"train.optimizer: unknown optimizer {name!r}; "
                     f"expected one of {', '.join(OPTIMIZERS)}")
