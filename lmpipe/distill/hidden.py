"""Hidden-state losses between mapped student and teacher layers (FitNets, Romero et al. 2015;
TinyBERT, Jiao et al. 2020), per target position, after projecting the student to the teacher's
width (projector.py):

    hidden_mse(h_s, h_t)    = mean_d (P h_s - h_t)^2
    hidden_cosine(h_s, h_t) = 1 - cos(P h_s, h_t)
    hidden_infonce(h_s, h_t)_i = -log softmax_j(cos(P h_s_i, h_t_j) / tau)_i

hidden_infonce is the InfoNCE bound on the mutual information between the student's and the
teacher's states (van den Oord et al. 2018; CRD, Tian et al. 2020): each position's projected
student state must pick out the teacher's state at the same position among the teacher's states
at all n target positions of the (micro-)batch, its negatives, and I(student; teacher) >=
log n - mean_i hidden_infonce_i. Its (n, n) similarity matrix grows with the batch's targets
squared (8k targets: 256 MB in fp32).
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


def hidden_infonce(projected: torch.Tensor, teacher: torch.Tensor,
                   temperature: float = 0.1) -> torch.Tensor:
    """Per-position InfoNCE loss against the other positions as negatives; (n, d) -> (n,)."""
    student = F.normalize(projected.float(), dim=-1, eps=1e-8)
    target = F.normalize(teacher.float(), dim=-1, eps=1e-8)
    scores = student @ target.T / temperature
    return -torch.diagonal(torch.log_softmax(scores, dim=-1))
