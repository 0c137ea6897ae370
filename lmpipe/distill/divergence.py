"""Kullback-Leibler divergence between log-probability tensors, exact where probabilities vanish.

    KL(a || b) = sum_i a_i (log a_i - log b_i),   with 0 log 0 = 0 and a_i log(a_i / 0) = inf

Every logit loss is built from this one function, so the conventions at zero probability (an
empty residual bucket, a teacher that rules a token out) are the same everywhere.
"""

from __future__ import annotations

import torch


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row over the last dimension, for log-probabilities `log_a`, `log_b`."""
    present = log_a > float("-inf")
    # substitute finite values where a_i = 0 so neither the value nor the gradient sees -inf - -inf
    safe_a = torch.where(present, log_a, torch.zeros_like(log_a))
    safe_b = torch.where(present, log_b, torch.zeros_like(log_b))
    terms = torch.where(present, safe_a.exp() * (safe_a - safe_b), torch.zeros_like(log_a))
    return terms.sum(-1)


def mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w a + (1 - w) b), computed in probability space through logsumexp; 0 < w < 1."""
    weight = torch.tensor(weight_a, dtype=log_a.dtype, device=log_a.device)
    return torch.logsumexp(torch.stack([log_a + weight.log(), log_b + torch.log1p(-weight)]), dim=0)
