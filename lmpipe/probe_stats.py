"""Summary statistics of a tensor seen by a probe, and the entropy of attention weights.

Quantiles are computed on at most `QUANTILE_SAMPLE` evenly strided elements (torch.quantile
refuses very large inputs and sorting all of them would dominate a probed step); every other
statistic uses every element. Everything is computed in float64 from a detached tensor.
"""

from __future__ import annotations

import math

import torch

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
QUANTILE_SAMPLE = 1 << 16


def quantile_name(q: float) -> str:
    return f"q{round(q * 100):02d}"


def summary_stats(tensor: torch.Tensor) -> dict[str, float]:
    """mean, std (population), rms, max_abs, frac_zero, q01..q99 and numel of `tensor`."""
    x = tensor.detach().reshape(-1).to(torch.float64)
    n = x.numel()
    if n == 0:
        return {"numel": 0}
    mean = x.mean()
    stats = {
        "mean": mean.item(),
        "std": (x - mean).pow(2).mean().sqrt().item(),
        "rms": x.pow(2).mean().sqrt().item(),
        "max_abs": x.abs().max().item(),
        "frac_zero": (x == 0).double().mean().item(),
        "numel": n,
    }
    sample = x[:: max(1, math.ceil(n / QUANTILE_SAMPLE))]
    values = torch.quantile(sample, torch.tensor(QUANTILES, dtype=torch.float64))
    stats |= {quantile_name(q): v.item() for q, v in zip(QUANTILES, values)}
    return stats


def attention_entropy(weights: torch.Tensor) -> dict[str, float]:
    """Mean entropy (nats) of attention rows (..., T_query, T_key) that sum to 1, and the mean of
    entropy / log(keys each row may see): 1 = uniform over the visible past, 0 = one key."""
    p = weights.detach().to(torch.float64)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    visible = (p > 0).sum(-1).clamp_min(1).to(torch.float64)
    normalized = torch.where(visible > 1, entropy / torch.log(visible), torch.zeros_like(entropy))
    return {"entropy": entropy.mean().item(), "entropy_norm": normalized.mean().item()}
