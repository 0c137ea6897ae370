"""Summary statistics of a tensor seen by a probe, and the entropy of attention weights.

Quantiles are computed on at most `QUANTILE_SAMPLE` evenly strided elements (torch.quantile
refuses very large inputs and sorting all of them would dominate a probed step); every other
statistic uses every element. The tensor is only read, never modified.
"""

from __future__ import annotations

import math

import torch

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
QUANTILE_SAMPLE = 8192


def quantile_name(q: float) -> str:
    return f"q{round(q * 100):02d}"


def summary_stats(tensor: torch.Tensor) -> dict[str, float]:
    """mean, std (population), rms, max_abs, frac_zero, q01..q99 and numel of `tensor`."""
    x = tensor.detach().reshape(-1)
    x = x if x.dtype == torch.float32 else x.float()
    n = x.numel()
    if n == 0:
        return {"numel": 0}
    # a few fast passes: a probed step reads its largest tensors (logits, their gradients) twice
    # each; float32 sums are pairwise, accurate to ~1e-7 relative here
    mean = x.sum().item() / n
    square = torch.dot(x, x).item() / n
    low, high = torch.aminmax(x)
    stats = {
        "mean": mean,
        "std": math.sqrt(max(square - mean * mean, 0.0)),
        "rms": math.sqrt(square),
        "max_abs": max(-low.item(), high.item()),
        "frac_zero": (n - torch.count_nonzero(x).item()) / n,
        "numel": n,
    }
    sample = x[:: max(1, math.ceil(n / QUANTILE_SAMPLE))].double()
    values = torch.quantile(sample, torch.tensor(QUANTILES, dtype=torch.float64))
    stats |= {quantile_name(q): v.item() for q, v in zip(QUANTILES, values)}
    return stats


def attention_entropy(weights: torch.Tensor) -> dict[str, float]:
    """Mean entropy (nats) of attention rows (..., T_query, T_key) that sum to 1, and the mean of
    entropy / log(keys each row may see): 1 = uniform over the visible past, 0 = one key."""
    p = weights.detach().float()
    entropy = -torch.xlogy(p, p).sum(-1)  # 0 log 0 = 0 for masked keys
    visible = (p > 0).sum(-1).clamp_min(1).float()
    normalized = torch.where(visible > 1, entropy / torch.log(visible), torch.zeros_like(entropy))
    return {"entropy": entropy.mean().item(), "entropy_norm": normalized.mean().item()}
