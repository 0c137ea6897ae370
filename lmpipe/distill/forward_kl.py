"""Forward KL, the classic distillation loss (Hinton et al. 2015), mode-covering:

    forward_kl(p, q) = KL(p || q) = sum_i p_i (log p_i - log q_i)

p: teacher, q: student, both softened by the temperature T (the caller scales the result by T^2
so gradients keep their size as T changes).
"""

from __future__ import annotations

import torch

from lmpipe.distill.divergence import kl


def forward_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student); shapes (n, support) -> (n,)."""
    return kl(log_p, log_q)
