"""Skew KL divergences (DistiLLM, Ko et al. 2024): KL against a mixture, which stays finite and
has bounded gradients where the plain KL explodes.

    skew_kl(p, q)         = KL(p || a p + (1 - a) q)
    skew_reverse_kl(p, q) = KL(q || a q + (1 - a) p)

a = `skew_alpha` (DistiLLM uses 0.1); a = 0 gives the forward / reverse KL.
"""

from __future__ import annotations

import torch

from lmpipe.distill.divergence import kl, mixture


def skew_kl(log_p: torch.Tensor, log_q: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Per-position skew forward KL; (n, support) -> (n,)."""
    return kl(log_p, log_q if alpha == 0.0 else mixture(log_p, log_q, alpha))


def skew_reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Per-position skew reverse KL; (n, support) -> (n,)."""
    return kl(log_q, log_p if alpha == 0.0 else mixture(log_q, log_p, alpha))
