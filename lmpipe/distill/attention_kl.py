"""Attention-map distillation (MiniLM, Wang et al. 2020): at each target query position, the KL
between the teacher's and the student's attention distributions over the keys, heads averaged (so
head counts may differ):

    attention_kl(A_t, A_s) = KL(mean_h A_t[q, :] || mean_h A_s[q, :])

Needs attention weights, so both models run eager attention. The teacher's rows come from a live
teacher, or from a cache written with `teacher_cache.attention_layers` over whole documents (a
row depends on where its context starts, so windows need the live teacher).
"""

from __future__ import annotations

import torch

from lmpipe.distill.divergence import kl


def head_mean_rows(attentions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(b, heads, T, T) attention weights -> (n, T) head-averaged rows at the target queries
    (query i predicts token i + 1, so rows 0 .. T-2 align with `targets`)."""
    return attentions.float().mean(1)[:, :-1][targets]


def _log(rows: torch.Tensor) -> torch.Tensor:
    """log of attention weights, -inf exactly where a key is masked (weight 0)."""
    floor = torch.finfo(torch.float32).tiny
    return torch.where(rows > 0, rows.clamp_min(floor).log(), torch.full_like(rows, float("-inf")))


def attention_kl(teacher_rows: torch.Tensor, student_rows: torch.Tensor) -> torch.Tensor:
    """Per-query KL(teacher || student) over keys; (n, T) -> (n,)."""
    return kl(_log(teacher_rows), _log(student_rows))
