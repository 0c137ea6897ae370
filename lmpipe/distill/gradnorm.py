"""GradNorm (Chen et al. 2018): loss weights learned so that each term's gradient norm follows
how fast the term trains.

Each term i gets a learned multiplier w_i, starting at 1 and renormalized to sum to the number
of terms n before every step; the student trains on

    loss = sum_i w_i * weighted_i          (w held constant here),

weighted_i the term times its objective weight, per target. With G_i = ||grad_theta(w_i *
weighted_i)|| over the student's trainable parameters theta, L~_i = m_i / m_i(0) the term's
per-target mean relative to its first step and r_i = L~_i / mean_j L~_j its relative training
rate, w alone takes the gradient of

    L_grad = sum_i |G_i - mean_j(G_j) * r_i^alpha|      (the targets mean(G) * r^alpha constant),

through G_i = w_i * ||grad_theta(weighted_i)||: a term that trains slower than the others (r_i > 1)
has its gradient pushed above the mean, one that trains faster below it, and alpha sets how hard.
The paper takes theta as the last shared layer to save compute; every distillation term shares
the whole student, so theta is all of it here, at one extra backward pass per term.
"""

from __future__ import annotations

import torch
from torch import nn


class GradNormWeights(nn.Module):
    """The multipliers w (a parameter the student's optimizer trains) and each term's first
    per-target mean m(0) (a buffer, so a resumed run keeps its reference)."""

    def __init__(self, terms: list[str]) -> None:
        super().__init__()
        self.terms = list(terms)
        self.weights = nn.Parameter(torch.ones(len(terms)))
        self.register_buffer("initial", torch.full((len(terms),), float("nan")))

    @torch.no_grad()
    def renormalize(self) -> None:
        """Keep every multiplier positive and their sum at the number of terms (the paper's
        renormalization after each step, done before the next one uses them)."""
        self.weights.clamp_(min=1e-3)
        self.weights.mul_(len(self.terms) / self.weights.sum())


def gradnorm_loss(weights: GradNormWeights, weighted: list[torch.Tensor],
                  params: list[torch.Tensor], targets: torch.Tensor,
                  alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss for the training loop, the gradient norms G). `weighted` are the weighted terms
    summed over `targets` target positions (the loop divides by the targets): the loss's value is
    sum_i w_i * weighted_i, its gradient on theta that of the same sum with w constant and its
    gradient on w that of L_grad (module docstring)."""
    count = targets.clamp(min=1)
    means = torch.stack([value.detach() / count for value in weighted])
    if torch.isnan(weights.initial).any():
        weights.initial.copy_(means.clamp_min(1e-12))
    norms = []
    for value in weighted:
        grads = torch.autograd.grad(value / count, params, retain_graph=True, allow_unused=True)
        norms.append(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads
                                    if g is not None)))
    w = weights.weights
    norm_g = w * torch.stack(norms)
    ratio = means / weights.initial
    goal = (norm_g.mean() * (ratio / ratio.mean()) ** alpha).detach()
    balance = (norm_g - goal).abs().sum()
    total = sum(m * value for m, value in zip(w.detach(), weighted))
    # the value stays sum_i w_i * weighted_i; the balance term only adds w's gradient (times
    # the targets, which the loop divides by)
    return total + (balance - balance.detach()) * count, norm_g.detach()
