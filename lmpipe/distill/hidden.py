"""Hidden-state losses between mapped student and teacher layers (FitNets, Romero et al. 2015;
TinyBERT, Jiao et al. 2020), per target position, after projecting the student to the teacher's
width (projector.py):

    hidden_mse(h_s, h_t)    = mean_d (P h_s - h_t)^2
    hidden_cosine(h_s, h_t) = 1 - cos(P h_s, h_t)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hidden_mse(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-position mean squared error; (n, d) -> (n,)."""
    return (projected.float() - teacher.float()).pow(2).mean(-1)


def hidden_cosine(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-position cosine distance; (n, d) -> (n,)."""
    return 1.0 - F.cosine_similarity(projected.float(), teacher.float(), dim=-1, eps=1e-8)
