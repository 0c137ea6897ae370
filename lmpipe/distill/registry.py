"""The registry of logit losses: name -> per-position loss(log_p, log_q, options).

`options` carries the knobs some losses take (jsd_beta, skew_alpha, the teacher confidence for
cakld, sinkhorn's ground cost, epsilon and iterations). The names are those `distill.objective` accepts (lmpipe.distill.terms.LOGIT_TERMS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lmpipe.distill.cakld import cakld
from lmpipe.distill.forward_kl import forward_kl
from lmpipe.distill.jsd import jsd
from lmpipe.distill.reverse_kl import reverse_kl
from lmpipe.distill.sinkhorn import sinkhorn_divergence
from lmpipe.distill.skew_kl import skew_kl, skew_reverse_kl
from lmpipe.distill.tvd import tvd


@dataclass
class LossOptions:
    jsd_beta: float = 0.5
    skew_alpha: float = 0.1
    confidence: torch.Tensor | None = None  # cakld: mean teacher probability of the labels
    cost: torch.Tensor | None = None  # sinkhorn: the ground cost on the batch's support
    sinkhorn_epsilon: float = 0.1
    sinkhorn_iterations: int = 50


LogitLoss = Callable[[torch.Tensor, torch.Tensor, LossOptions], torch.Tensor]

LOGIT_LOSSES: dict[str, LogitLoss] = {
    "forward_kl": lambda p, q, o: forward_kl(p, q),
    "reverse_kl": lambda p, q, o: reverse_kl(p, q),
    "jsd": lambda p, q, o: jsd(p, q, o.jsd_beta),
    "tvd": lambda p, q, o: tvd(p, q),
    "skew_kl": lambda p, q, o: skew_kl(p, q, o.skew_alpha),
    "skew_reverse_kl": lambda p, q, o: skew_reverse_kl(p, q, o.skew_alpha),
    "cakld": lambda p, q, o: cakld(p, q, o.confidence),
    "sinkhorn": lambda p, q, o: sinkhorn_divergence(p, q, o.cost, o.sinkhorn_epsilon,
                                                    o.sinkhorn_iterations),
}
