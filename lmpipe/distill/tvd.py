"""Total variation distance (used for distillation by DistiLLM-2 and Wen et al. 2023):

    tvd(p, q) = 1/2 sum_i |p_i - q_i|         (bounded in [0, 1], symmetric)
"""

from __future__ import annotations

import torch


def tvd(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-position total variation distance; (n, support) -> (n,)."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
