"""Each distillation loss against a direct computation on small tensors."""

import pytest
import torch

from lmpipe.distill.cache.format import log_tempered_tail, top_k_with_missing
from lmpipe.distill.cakld import cakld
from lmpipe.distill.forward_kl import forward_kl
from lmpipe.distill.hidden import hidden_cosine, hidden_mse
from lmpipe.distill.jsd import jsd
from lmpipe.distill.registry import LOGIT_LOSSES, LossOptions
from lmpipe.distill.reverse_kl import reverse_kl
from lmpipe.distill.sinkhorn import sinkhorn_divergence, support_cost, token_cost
from lmpipe.distill.skew_kl import skew_kl, skew_reverse_kl
from lmpipe.distill.support import TailTemperatureError, TeacherDistribution, aligned
from lmpipe.distill.tvd import tvd
from lmpipe.distill.terms import LOGIT_TERMS


def _pair(seed=0, n=5, v=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.log_softmax(torch.randn(n, v, generator=g) * 2, -1),
            torch.log_softmax(torch.randn(n, v, generator=g) * 2, -1))


def _direct_kl(a, b):
    return (a.exp() * (a - b)).sum(-1)


def test_registry_matches_the_term_table():
    assert set(LOGIT_LOSSES) == set(LOGIT_TERMS)


def test_kls_against_the_formula():
    log_p, log_q = _pair()
    torch.testing.assert_close(forward_kl(log_p, log_q), _direct_kl(log_p, log_q))
    torch.testing.assert_close(reverse_kl(log_p, log_q), _direct_kl(log_q, log_p))
    assert not torch.allclose(forward_kl(log_p, log_q), reverse_kl(log_p, log_q))


def test_jsd_endpoints_are_the_kls_and_the_interior_mixes_in_probability_space():
    log_p, log_q = _pair(1)
    torch.testing.assert_close(jsd(log_p, log_q, 0.0), forward_kl(log_p, log_q))
    torch.testing.assert_close(jsd(log_p, log_q, 1.0), reverse_kl(log_p, log_q))
    for beta in (0.1, 0.5, 0.9):
        m = (beta * log_p.exp() + (1 - beta) * log_q.exp()).log()
        direct = beta * _direct_kl(log_p, m) + (1 - beta) * _direct_kl(log_q, m)
        torch.testing.assert_close(jsd(log_p, log_q, beta), direct)
    # beta = 0.5 is the symmetric Jensen-Shannon divergence, bounded by log 2
    torch.testing.assert_close(jsd(log_p, log_q, 0.5), jsd(log_q, log_p, 0.5))
    assert jsd(log_p, log_q, 0.5).max() <= torch.log(torch.tensor(2.0))


def test_tvd_skew_and_cakld_against_the_formula():
    log_p, log_q = _pair(2)
    p, q = log_p.exp(), log_q.exp()
    torch.testing.assert_close(tvd(log_p, log_q), 0.5 * (p - q).abs().sum(-1))
    a = 0.1
    torch.testing.assert_close(skew_kl(log_p, log_q, a), _direct_kl(log_p, (a * p + (1 - a) * q).log()))
    torch.testing.assert_close(skew_reverse_kl(log_p, log_q, a),
                               _direct_kl(log_q, (a * q + (1 - a) * p).log()))
    torch.testing.assert_close(skew_kl(log_p, log_q, 0.0), forward_kl(log_p, log_q))
    g = torch.tensor(0.3)
    torch.testing.assert_close(cakld(log_p, log_q, g),
                               0.3 * _direct_kl(log_q, log_p) + 0.7 * _direct_kl(log_p, log_q))
    torch.testing.assert_close(cakld(log_p, log_q, torch.tensor(0.0)), forward_kl(log_p, log_q))


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_every_logit_loss_is_zero_for_identical_and_positive_otherwise(name):
    log_p, log_q = _pair(3)
    options = LossOptions(jsd_beta=0.5, skew_alpha=0.1, confidence=torch.tensor(0.4),
                          cost=token_cost(torch.randn(log_p.shape[-1], 4,
                                                      generator=torch.Generator().manual_seed(1))))
    same = LOGIT_LOSSES[name](log_p, log_p.clone(), options)
    assert same.abs().max().item() < 1e-6
    assert (LOGIT_LOSSES[name](log_p, log_q, options) > 1e-3).all()


def test_zero_probabilities_follow_0_log_0_and_have_finite_gradients():
    log_p = torch.tensor([[0.0, float("-inf"), float("-inf")]])  # teacher certain of token 0
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    log_q = torch.log_softmax(logits, -1)
    loss = forward_kl(log_p, log_q)
    torch.testing.assert_close(loss, -log_q[:, 0])  # = cross-entropy on token 0
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert reverse_kl(log_p, log_q).item() == float("inf")  # the student has mass the teacher rules out


def _plain_sinkhorn(a, b, cost, eps, iterations=3000):
    """Entropic OT by matrix scaling in float64 (P = diag(u) K diag(v), K = exp(-C / eps)): the
    textbook algorithm, not the log-domain one; its potentials relative to a x b are
    eps log(u / a), eps log(v / b), the dual value <a, f> + <b, g>."""
    kernel = torch.exp(-cost / eps)
    u, v = torch.ones_like(a), torch.ones_like(b)
    for _ in range(iterations):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return (a * eps * (u / a).log()).sum() + (b * eps * (v / b).log()).sum()


def test_sinkhorn_divergence_against_matrix_scaling_in_float64():
    g = torch.Generator().manual_seed(2)
    cost = token_cost(torch.randn(7, 4, generator=g)).double()
    log_a, log_b = _pair(5, n=3, v=7)
    for eps in (0.3, 1.0):
        got = sinkhorn_divergence(log_a, log_b, cost.float(), eps, iterations=300)
        for row in range(3):
            a, b = log_a[row].double().exp(), log_b[row].double().exp()
            expected = (_plain_sinkhorn(a, b, cost, eps) - _plain_sinkhorn(a, a, cost, eps) / 2
                        - _plain_sinkhorn(b, b, cost, eps) / 2)
            assert got[row].item() == pytest.approx(expected.item(), abs=1e-5)


def test_sinkhorn_is_the_transport_cost_at_small_epsilon_and_safe_in_half_precision():
    # two tokens at cost 1: moving |p0 - q0| of mass costs |p0 - q0| (the Wasserstein-1 distance);
    # at eps = 0.01 exp(-C / eps) = e^-100 underflows half precision, not the log domain
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for p0, q0 in [(0.9, 0.1), (0.7, 0.6), (0.5, 0.5)]:
        a, b = torch.tensor([[p0, 1 - p0]]).log(), torch.tensor([[q0, 1 - q0]]).log()
        assert sinkhorn_divergence(a, b, cost, 0.01, 500).item() == pytest.approx(
            abs(p0 - q0), abs=0.01)
    log_a, log_b = _pair(6, n=4, v=9)
    cost = token_cost(torch.randn(9, 4, generator=torch.Generator().manual_seed(3)))
    for dtype in (torch.bfloat16, torch.float16):
        logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(4)).to(dtype)
        logits.requires_grad_(True)
        student = torch.log_softmax(logits, -1)
        half = sinkhorn_divergence(log_a.to(dtype), student, cost.to(dtype), 0.05, 100)
        full = sinkhorn_divergence(log_a.to(dtype).float(), student.float(), cost.to(dtype).float(),
                                   0.05, 100)
        assert torch.isfinite(half).all() and (half > 0).all()
        torch.testing.assert_close(half, full)  # computed in float32 whatever comes in
        half.sum().backward()
        assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0
    # a teacher certain of one token (log 0 elsewhere) on a truncated support with its rest bucket
    certain = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    ids = torch.tensor([[0, 3]])
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    value = sinkhorn_divergence(certain, torch.log_softmax(logits, -1),
                                support_cost(cost, ids), 0.1)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()


def test_hidden_losses_against_the_formula():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    torch.testing.assert_close(hidden_mse(a, b), ((a - b) ** 2).mean(-1))
    torch.testing.assert_close(hidden_cosine(a, b),
                               1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)))
    assert hidden_mse(a, a).abs().max() == 0 and hidden_cosine(a, 3 * a).abs().max() < 1e-6


def test_residual_bucket_holds_the_exact_tails_and_full_k_is_the_full_distribution():
    teacher_logp, student_logits = _pair(5, v=12)[0], torch.randn(5, 12)
    ids, values, missing = top_k_with_missing(teacher_logp, 4)
    student = torch.log_softmax(student_logits, -1)
    t, s = aligned(student, TeacherDistribution(values, ids, missing), 1.0, "residual")
    p, q = teacher_logp.exp(), torch.softmax(student_logits, -1)
    torch.testing.assert_close(t.exp()[:, :4], p.gather(-1, ids))
    torch.testing.assert_close(t.exp()[:, 4], 1 - p.gather(-1, ids).sum(-1))
    torch.testing.assert_close(s.exp()[:, 4], 1 - q.gather(-1, ids).sum(-1))
    t0, _ = aligned(student, TeacherDistribution(values, ids, missing), 1.0, "zero")
    assert (t0[:, 4] == float("-inf")).all()
    torch.testing.assert_close(t0.exp()[:, :4].sum(-1), torch.ones(5))  # renormalized top-k
    # k = V: the same numbers as the full computation, at any temperature
    ids, values, missing = top_k_with_missing(teacher_logp, 12)
    for temperature in (1.0, 2.5):
        student = torch.log_softmax(student_logits / temperature, -1)
        t, s = aligned(student, TeacherDistribution(values, ids, missing), temperature)
        full_t, full_s = aligned(student, TeacherDistribution(teacher_logp), temperature)
        torch.testing.assert_close(forward_kl(t, s), forward_kl(full_t, full_s))
        torch.testing.assert_close(reverse_kl(t, s), reverse_kl(full_t, full_s))


def test_the_rest_bucket_at_t_is_the_tempered_tail_not_the_tempered_mass():
    """k < V at T = 2: the teacher side equals softmax(log p / T) over the vocabulary with the
    tail summed into one bucket, for every term alike; without the tail at T it is an error."""
    teacher_logp, student_logits = _pair(6, v=12)[0], torch.randn(5, 12)
    temperature = 2.0
    ids, values, missing = top_k_with_missing(teacher_logp, 4)
    tail = log_tempered_tail(teacher_logp, ids, temperature)
    student = torch.log_softmax(student_logits / temperature, -1)
    t, s = aligned(student, TeacherDistribution(values, ids, missing, tail, temperature),
                   temperature)
    tempered = torch.softmax(teacher_logp / temperature, -1)
    torch.testing.assert_close(t.exp()[:, :4], tempered.gather(-1, ids))
    torch.testing.assert_close(t.exp()[:, 4], 1 - tempered.gather(-1, ids).sum(-1))
    # the old one-token tail, log m / T, is visibly wrong here
    old = torch.log_softmax(torch.cat([values, missing[:, None]], -1) / temperature, -1)
    assert (old.exp()[:, 4] - t.exp()[:, 4]).abs().max() > 0.05
    with pytest.raises(TailTemperatureError, match="known at T = 1 only, not at T = 2"):
        aligned(student, TeacherDistribution(values, ids, missing), temperature)
    with pytest.raises(TailTemperatureError, match="T = 1 and T = 3"):
        aligned(student, TeacherDistribution(values, ids, missing, tail, 3.0), temperature)
