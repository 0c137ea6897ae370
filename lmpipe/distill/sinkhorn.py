"""The Sinkhorn divergence between the teacher's and the student's next-token distributions, with
a ground cost between tokens: an optimal-transport distance, so that mass the student puts on a
token *near* the teacher's (by the cost) costs less than mass on an unrelated one, which no KL
or TVD can tell apart (distily's `sinkhorn` objective, which failed in bf16).

For distributions a (teacher) and b (student) on a support with cost C (entropic OT, Cuturi 2013;
the debiased divergence of Feydy et al. 2019, as geomloss computes it):

    OT_eps(a, b) = max_{f, g} <a, f> + <b, g> - eps <a x b, exp((f + g' - C) / eps) - 1>
    S_eps(a, b)  = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2        (>= 0, 0 iff a = b)

The potentials come from `iterations` log-domain Sinkhorn updates,

    f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps),   g_j = -eps LSE_i(log a_i + (f_i - C_ij) / eps)

in float32 whatever the inputs' dtype (bf16 and fp16 log-probabilities are upcast first: the
exp/log of eps-scaled costs over- and underflows in half precision, and the log domain keeps
zero-probability tokens, log 0 = -inf, harmless). At the optimum the dual value is <a, f> +
<b, g>, and its gradient in b is g (the envelope theorem, as geomloss uses it): the potentials
are computed without gradient and the divergence is differentiated through the weights only,
which costs no backward through the iterations.

The ground cost is the cosine distance 1 - cos(e_i, e_j) between the teacher's input embeddings
(`token_cost`); on a truncated teacher's support (its top-k tokens and the rest bucket) the rest
bucket is at distance 1 from every token and 0 from itself (`support_cost`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cost(embeddings: torch.Tensor) -> torch.Tensor:
    """(V, V) cosine distances between the rows of `embeddings` (V, d), in float32."""
    unit = F.normalize(embeddings.detach().float(), dim=-1, eps=1e-8)
    return (1.0 - unit @ unit.T).clamp(min=0.0).fill_diagonal_(0.0)


def support_cost(cost: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """The cost on each position's support: `cost` itself for the whole vocabulary (ids None),
    else (n, k + 1, k + 1) over the top-k `ids` (n, k) then the rest bucket."""
    if ids is None:
        return cost
    n, k = ids.shape
    out = cost.new_ones((n, k + 1, k + 1))
    out[:, :k, :k] = cost[ids[:, :, None], ids[:, None, :]]
    out[:, k, k] = 0.0
    return out


@torch.no_grad()
def _potentials(log_a: torch.Tensor, log_b: torch.Tensor, cost: torch.Tensor, epsilon: float,
                iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, g), each (n, k): the Sinkhorn potentials of a (n, k) and b (n, k) under `cost`
    ((k, k) or (n, k, k)), log-domain."""
    scaled = (cost / epsilon).expand(log_a.shape[0], -1, -1)  # (n, k, k): C_ij / eps
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iterations):
        f = -epsilon * torch.logsumexp(log_b[:, None, :] + g[:, None, :] / epsilon - scaled, -1)
        g = -epsilon * torch.logsumexp(log_a[:, :, None] + f[:, :, None] / epsilon - scaled, -2)
    return f, g


def sinkhorn_divergence(log_a: torch.Tensor, log_b: torch.Tensor, cost: torch.Tensor,
                        epsilon: float = 0.1, iterations: int = 50) -> torch.Tensor:
    """Per-position S_eps(a, b) (module docstring) of log-probabilities `log_a`, `log_b` (n, k)
    on the support whose cost is `cost` ((k, k) or (n, k, k)); differentiable in both weights."""
    log_a, log_b, cost = log_a.float(), log_b.float(), cost.float()
    a, b = log_a.exp(), log_b.exp()
    f_ab, g_ab = _potentials(log_a, log_b, cost, epsilon, iterations)
    f_aa, g_aa = _potentials(log_a, log_a, cost, epsilon, iterations)
    f_bb, g_bb = _potentials(log_b, log_b, cost, epsilon, iterations)
    # each OT_eps as its dual value <a, f> + <b, g> (both potentials of a symmetric problem:
    # S(a, a) is then exactly 0 after any number of iterations)
    on_a = f_ab - (f_aa + g_aa) / 2
    on_b = g_ab - (f_bb + g_bb) / 2
    return (a * on_a).sum(-1) + (b * on_b).sum(-1)
