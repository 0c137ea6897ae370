"""Reverse KL, mode-seeking (MiniLLM, Gu et al. 2023):

    reverse_kl(p, q) = KL(q || p) = sum_i q_i (log q_i - log p_i)

Infinite wherever the student puts mass on a token the teacher gives probability zero; with a
truncated cache that is why `missing_mass: residual` (the teacher's tail as one bucket) is needed.
"""

from __future__ import annotations

import torch

from lmpipe.distill.divergence import kl


def reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-position KL(student || teacher); shapes (n, support) -> (n,)."""
    return kl(log_q, log_p)
