"""Ternary quantization, BitNet b1.58's absmean rule: the math that QAT layers, the packed export
and post-training quantization share.

For each weight matrix W: gamma = mean|W|, W_q = clip(round(W / (gamma + eps)), -1, 1), and the
layer computes with W_q * gamma.
"""

from __future__ import annotations

import torch

from lmpipe.quant.float_linears import read_by_weight

EPS = 1e-5


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ternary codes in {-1, 0, 1}, scale gamma) for one weight matrix."""
    gamma = weight.abs().mean()
    codes = (weight / (gamma + EPS)).round().clamp(-1, 1)
    return codes, gamma


@torch.no_grad()
def quantize_ternary_(model: torch.nn.Module, skip: list[str]) -> dict[str, float]:
    """Replace every nn.Linear weight (names not matching `skip`, none the architecture reads by
    weight: lmpipe/quant/float_linears.py) with its ternary approximation."""
    scales: dict[str, float] = {}
    by_weight = read_by_weight(model)
    for name, module in model.named_modules():
        if (not isinstance(module, torch.nn.Linear) or any(s in name for s in skip)
                or name in by_weight):
            continue
        codes, gamma = ternarize(module.weight)
        module.weight.copy_(codes * gamma)
        scales[name] = float(gamma)
    if not scales:
        raise ValueError("quantize: the model has no nn.Linear layers outside "
                         f"quantize.skip_modules={skip}; nothing to quantize")
    return scales
