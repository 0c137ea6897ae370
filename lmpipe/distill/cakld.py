"""Confidence-aware KL (CAKLD, BitDistiller, Du et al. 2024):

    cakld(p, q) = g KL(q || p) + (1 - g) KL(p || q)

g is the teacher's mean confidence: the mean probability it gives the label tokens. A confident
teacher (g near 1) is imitated mode-seeking (reverse KL), an unsure one mode-covering (forward
KL). BitDistiller estimates g once over the training set; lmpipe uses the same estimator over each
micro-batch's target tokens, which the live teacher and the cache both provide (logged as
`cakld_confidence`).
"""

from __future__ import annotations

import torch

from lmpipe.distill.divergence import kl


def teacher_confidence(label_logprobs: torch.Tensor) -> torch.Tensor:
    """g = mean teacher probability of the labels (a scalar, no gradient)."""
    return label_logprobs.detach().exp().mean()


def cakld(log_p: torch.Tensor, log_q: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Per-position CAKLD with teacher confidence g = `confidence`; (n, support) -> (n,)."""
    return confidence * kl(log_q, log_p) + (1.0 - confidence) * kl(log_p, log_q)
