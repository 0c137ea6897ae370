"""Quantization-aware training for BitNet b1.58: a drop-in `nn.Linear` with ternary weights and
8-bit activations in the forward pass and straight-through gradients.

    weights      gamma = mean|W|,  Wq = clip(round(W / (gamma + eps)), -1, 1) * gamma   (per tensor)
    activations  s = 127 / max|x| (per token),  xq = clip(round(x * s), -128, 127) / s
    warm-up      W' = W + lam * (Wq - W).detach(),   x' = x + lam * (xq - x).detach()

The `.detach()` makes the gradient the identity (straight-through estimator); `lam` rises from 0
to 1 over `train.qat_warmup_steps` (linear or sigmoid), which lets a pretrained full-precision
model be converted without the loss spike of switching quantization on at once. At lam = 1 the
forward pass is exactly the BitNet inference transformers runs from a packed checkpoint, so the
exported model computes what was trained. The latent full-precision weights stay the parameters;
the lm head and embeddings stay full precision by default (`qat_skip_modules`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmpipe.quant.float_linears import check_qat_forward, read_by_weight
from lmpipe.quant.last_input import LastInputMemo
from lmpipe.quant.ternary import ternarize


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric 8-bit absmax fake quantization."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127) / scale


def _ternary_weight(weight: torch.Tensor) -> torch.Tensor:
    codes, gamma = ternarize(weight)
    return codes * gamma


class _FakeQuantWeight(torch.autograd.Function):
    """W + lam * (Wq - W) forward, identity backward: the straight-through estimator as one
    autograd node, where `W + lam * (Wq - W).detach()` recorded every operator of the quantizer
    and of the blend (the same forward values and the same gradient)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, lam: float) -> torch.Tensor:
        return weight + lam * (_ternary_weight(weight) - weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _FakeQuantActivation(torch.autograd.Function):
    """x + lam * (xq - x) forward, identity backward (as _FakeQuantWeight)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        return x + lam * (quantize_activations(x) - x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


# q, k, v (and gate, up) read one tensor: its fake quantization is computed once
_QUANTIZED_INPUT = LastInputMemo(_FakeQuantActivation.apply)


class BitLinear158(nn.Linear):
    """An nn.Linear trained through ternary weights and 8-bit activations (same parameters and
    state-dict keys as the nn.Linear it replaces, so checkpoints and saving are unchanged)."""

    lam: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lam <= 0.0:
            return F.linear(x, self.weight, self.bias)
        weight = _FakeQuantWeight.apply(self.weight, self.lam)
        return F.linear(_QUANTIZED_INPUT(x, self.lam), weight, self.bias)


def convert_to_bitlinear(model: nn.Module, skip_modules: list[str]) -> list[str]:
    """Turn every nn.Linear whose name matches none of `skip_modules` into a BitLinear158 in
    place (the weights are kept); returns the converted names. Linears the architecture reads by
    weight stay nn.Linear (lmpipe/quant/float_linears.py)."""
    check_qat_forward(model)
    by_weight = read_by_weight(model)
    converted = []
    for name, module in model.named_modules():
        if (type(module) is nn.Linear and not any(s in name for s in skip_modules)
                and name not in by_weight):
            module.__class__ = BitLinear158  # same parameters, new forward
            converted.append(name)
    if not converted:
        raise ValueError(f"quantization-aware training: the model has no nn.Linear layers outside "
                         f"skip_modules={skip_modules}; nothing to quantize")
    return converted


def set_lambda(model: nn.Module, lam: float) -> None:
    for module in model.modules():
        if isinstance(module, BitLinear158):
            module.lam = lam


def qat_lambda(step: int, warmup_steps: int, schedule: str = "linear") -> float:
    """The warm-up factor at `step`: 0 -> 1 over `warmup_steps`, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    progress = step / warmup_steps
    if schedule == "sigmoid":
        # centred logistic, rescaled so it starts at exactly 0 and ends at exactly 1
        k = 10.0
        low, high = 1 / (1 + math.exp(k / 2)), 1 / (1 + math.exp(-k / 2))
        return (1 / (1 + math.exp(-k * (progress - 0.5))) - low) / (high - low)
    return progress

