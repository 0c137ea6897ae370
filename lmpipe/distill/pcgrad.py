"""Gradient surgery between two loss groups (PCGrad, Yu et al. 2020).

With g1 the gradient of the logit terms and g2 that of the hidden-state terms, when they conflict
(g1 . g2 < 0) each is projected onto the normal plane of the other before summing:

    g1' = g1 - (g1 . g2 / |g2|^2) g2,    g2' = g2 - (g2 . g1 / |g1|^2) g1,    g = g1' + g2'

otherwise g = g1 + g2. The cosine between g1 and g2 is logged every step (`grad_cosine`).
"""

from __future__ import annotations

import torch


def project_conflicting(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(combined flat gradient, cosine between g1 and g2) for flat gradients g1, g2."""
    dot = torch.dot(g1, g2)
    n1, n2 = g1.pow(2).sum(), g2.pow(2).sum()
    cosine = dot / (n1.sqrt() * n2.sqrt()).clamp_min(1e-30)
    if dot >= 0:
        return g1 + g2, cosine
    g1p = g1 - dot / n2.clamp_min(1e-30) * g2
    g2p = g2 - dot / n1.clamp_min(1e-30) * g1
    return g1p + g2p, cosine


def surgery_loss(params: list[torch.nn.Parameter], first: torch.Tensor,
                 second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in loss whose value is `first + second` and whose gradient is the PCGrad
    combination of their gradients (so the training loop's usual backward applies it)."""
    g1 = torch.autograd.grad(first, params, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(second, params, retain_graph=False, allow_unused=True)
    flat1 = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                       for g, p in zip(g1, params)])
    flat2 = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                       for g, p in zip(g2, params)])
    combined, cosine = project_conflicting(flat1, flat2)
    surrogate = torch.zeros((), device=first.device)
    offset = 0
    for p in params:
        g = combined[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        surrogate = surrogate + (p * g).sum()
    value = (first + second).detach()
    return value + surrogate - surrogate.detach(), cosine.detach()
