"""GradNorm's loss on hand-computed cases: its value, the student's gradient (the multipliers held
constant) and the multipliers' gradient (the balance term's), and the renormalization."""

import pytest
import torch

from lmpipe.distill.gradnorm import GradNormWeights, gradnorm_loss


def _two_terms(theta: torch.Tensor) -> list[torch.Tensor]:
    # term a = 2 * theta0 (gradient norm 2), term b = 5 * theta1 (gradient norm 5), one target
    return [2 * theta[0], 5 * theta[1]]


def test_the_balance_gradient_moves_each_multiplier_by_its_norm_gap():
    theta = torch.ones(2, requires_grad=True)
    weights = GradNormWeights(["a", "b"])
    # first per-target means (2, 2.5) against today's (2, 5): relative rates L~ = (1, 2),
    # r = (2/3, 4/3); alpha 1 -> goals mean(G) * r = 3.5 * (2/3, 4/3) = (2.333, 4.667)
    weights.initial.copy_(torch.tensor([2.0, 2.5]))
    loss, norms = gradnorm_loss(weights, _two_terms(theta), [theta], torch.tensor(1.0), alpha=1.0)
    assert loss.item() == pytest.approx(2 + 5)
    assert norms.tolist() == pytest.approx([2.0, 5.0])
    loss.backward()
    # the student sees sum_i w_i * term_i with w = 1: gradient (2, 5)
    assert theta.grad.tolist() == pytest.approx([2.0, 5.0])
    # G_a = 2 < 2.333 and G_b = 5 > 4.667: d|G_i - goal_i| / dw_i = sign(G_i - goal_i) * norm_i
    assert weights.weights.grad.tolist() == pytest.approx([-2.0, 5.0])


def test_alpha_zero_asks_for_equal_gradient_norms_and_targets_scale_the_balance():
    theta = torch.ones(2, requires_grad=True)
    weights = GradNormWeights(["a", "b"])
    with torch.no_grad():
        weights.weights.copy_(torch.tensor([3.0, 0.5]))
    # summed over 4 targets: per-target means (2, 5), gradient norms per target (2, 5)
    terms = [4 * t for t in _two_terms(theta)]
    loss, norms = gradnorm_loss(weights, terms, [theta], torch.tensor(4.0), alpha=0.0)
    # G = (3 * 2, 0.5 * 5) = (6, 2.5), goal = their mean 4.25 for both
    assert norms.tolist() == pytest.approx([6.0, 2.5])
    assert loss.item() == pytest.approx(3 * 8 + 0.5 * 20)
    loss.backward()
    # the loop divides by the targets: times 4 here so w's gradient is L_grad's own
    assert weights.weights.grad.tolist() == pytest.approx([4 * 2.0, 4 * -5.0])
    # the first call took today's means as the reference
    assert weights.initial.tolist() == pytest.approx([2.0, 5.0])


def test_renormalization_keeps_the_multipliers_positive_summing_to_the_term_count():
    weights = GradNormWeights(["a", "b", "c"])
    with torch.no_grad():
        weights.weights.copy_(torch.tensor([4.0, -1.0, 2.0]))
    weights.renormalize()
    total = 4.0 + 1e-3 + 2.0
    assert weights.weights.tolist() == pytest.approx([12 / total, 3e-3 / total, 6 / total])
