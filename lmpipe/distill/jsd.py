"""Generalized Jensen-Shannon divergence JSD(beta), as in GKD (Agarwal et al. 2024) and TRL:

    m = beta p + (1 - beta) q                       (mixed in probability space)
    jsd_beta(p, q) = beta KL(p || m) + (1 - beta) KL(q || m)        for 0 < beta < 1
    jsd_0 = KL(p || q) (forward KL),   jsd_1 = KL(q || p) (reverse KL)

The endpoints are defined as the KLs, as TRL's `generalized_jsd_loss` does: the interior formula
itself tends to 0 at both ends (its gradient behaves like beta * forward KL for small beta).
"""

from __future__ import annotations

import torch

from lmpipe.distill.divergence import kl, mixture


def jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Per-position JSD(beta) between teacher `log_p` and student `log_q`; (n, support) -> (n,)."""
    if beta == 0.0:
        return kl(log_p, log_q)
    if beta == 1.0:
        return kl(log_q, log_p)
    log_m = mixture(log_p, log_q, beta)
    return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)
