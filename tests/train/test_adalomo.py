"""AdaLomo (lmpipe/train/adalomo.py): its update against the published formulas written out here,
gradients freed inside backward, weight decay on the decay group only, clipping, resume, the
training loop, and what it refuses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmpipe.core.run_folder import RunLog
from lmpipe.core.section import ConfigError
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.train import loop
from lmpipe.train.adalomo import build_adalomo
from lmpipe.train.distributed import Dist
from lmpipe.train.loop import train
from lmpipe.train.optim import build_optimizer, state_bytes
from lmpipe.train.params import TrainParams
from tests.conftest import TINY_MODEL

pytest.importorskip("lomo_optim")

X = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]])
Y = torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _loss(model: nn.Module) -> torch.Tensor:
    dtype = model.weight.dtype
    return ((model(X.to(dtype)) - Y.to(dtype)) ** 2).sum()


def _reference_steps(steps: int, lr: float, wd: float) -> dict[str, torch.Tensor]:
    """AdaLomo by its formulas (Lv et al. 2023; Adafactor's factored second moment), in float64:
    beta2_t = 1 - t^-0.8; v = beta2_t v + (1 - beta2_t) (g^2 + 1e-30), factored into row and
    column means for a matrix; u = g / sqrt(v); u /= max(1, RMS(u)); decoupled decay on the
    weight matrix p *= 1 - lr max(1e-3, RMS(p)) wd; p -= lr max(1e-3, RMS(p)) u."""
    model = _linear().double()
    row = col = vec = None
    for t in range(1, steps + 1):
        model.zero_grad()
        _loss(model).backward()
        beta = 1 - t ** -0.8
        with torch.no_grad():
            for name, p in model.named_parameters():
                g = p.grad
                sq = g ** 2 + 1e-30
                if p.dim() == 2:
                    row = sq.mean(1) * (1 - beta) + (0 if row is None else beta * row)
                    col = sq.mean(0) * (1 - beta) + (0 if col is None else beta * col)
                    u = g / torch.sqrt((row / row.mean())[:, None] * col[None, :])
                    p.mul_(1 - lr * max(1e-3, p.pow(2).mean().sqrt().item()) * wd)
                else:
                    vec = sq * (1 - beta) + (0 if vec is None else beta * vec)
                    u = g / torch.sqrt(vec)
                u = u / max(1.0, u.pow(2).mean().sqrt().item())
                p.sub_(lr * max(1e-3, p.pow(2).mean().sqrt().item()) * u)
    return {n: p.detach() for n, p in model.named_parameters()}


def test_the_update_is_adalomos_formula_with_decay_on_the_matrix_only():
    model = _linear()
    opt = build_adalomo(model, lr=0.05, weight_decay=0.5, decayed={id(model.weight)})
    norms = []
    for _ in range(3):
        grads = torch.autograd.grad(_loss(model), list(model.parameters()))
        norms.append(math.sqrt(sum(g.pow(2).sum().item() for g in grads)))
        assert opt.fused_step(_loss(model), 0.05, grad_clip=0.0).item() == pytest.approx(
            norms[-1], rel=1e-5)
        # the update ran inside backward and freed every gradient
        assert all(p.grad is None for p in model.parameters())
    expected = _reference_steps(3, lr=0.05, wd=0.5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), expected[name], rtol=1e-5, atol=1e-6)
    # the factored state: a row and a column for the weight, a vector for the bias, a step each
    assert state_bytes(opt) == 4 * (3 + 4 + 3) + 2 * 4


def test_clipping_scales_the_gradient_to_the_clip_norm_first():
    # g / |g| * clip through the same update: with a 1e-3 clip every gradient is clipped, so the
    # weights move as if the loss were scaled to gradient norm 1e-3
    clipped, scaled = _linear(), _linear()
    opt_c = build_adalomo(clipped, lr=0.05, weight_decay=0.0, decayed=set())
    opt_s = build_adalomo(scaled, lr=0.05, weight_decay=0.0, decayed=set())
    norm = opt_c.fused_step(_loss(clipped), 0.05, grad_clip=1e-3).item()
    opt_s.fused_step(_loss(scaled) * (1e-3 / (norm + 1e-6)), 0.05, grad_clip=0.0)
    for a, b in zip(clipped.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)
    assert norm > 1.0  # really clipped


def test_it_resumes_from_its_saved_state_and_removes_its_hooks(tmp_path):
    whole = _linear()
    opt = build_adalomo(whole, lr=0.05, weight_decay=0.1, decayed={id(whole.weight)})
    for _ in range(3):
        opt.fused_step(_loss(whole), 0.05, 1.0)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    resumed = _linear()
    resumed.load_state_dict(whole.state_dict())
    opt2 = build_adalomo(resumed, lr=0.05, weight_decay=0.1, decayed={id(resumed.weight)})
    opt2.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert opt2.step_num == 3
    for _ in range(2):
        opt.fused_step(_loss(whole), 0.05, 1.0)
        opt2.fused_step(_loss(resumed), 0.05, 1.0)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    opt2.remove_hooks()
    before = [p.detach().clone() for p in resumed.parameters()]
    _loss(resumed).backward()  # a plain backward no longer updates anything
    assert all(torch.equal(a, b) for a, b in zip(before, resumed.parameters()))


def test_the_loop_trains_with_adalomo(tiny_tokens, tokenizer, tmp_path):
    # a relative step, as adafactor's: lr * RMS(param)
    tp = TrainParams(steps=40, batch_size=8, lr=0.1, warmup_steps=5, log_every=20,
                     eval_every=40, optimizer="adalomo")
    model = build_model(TINY_MODEL, 0)
    with RunLog(tmp_path, "train", "adalomo", {}) as run:
        summary = train(model, TokenSplit.open(tiny_tokens, "train"),
                        TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    assert summary["final_val_loss"] < 0.8 * summary["initial_val_loss"]
    # AdaLomo keeps a row and a column per matrix, a vector per 1-d parameter: far below AdamW
    tensors = list(model.parameters())
    factored = sum(4 * (p.shape[0] + p.shape[1]) if p.dim() == 2 else 4 * p.numel()
                   for p in tensors) + 4 * len(tensors)
    assert summary["optimizer_state_bytes"] == factored
    assert all(not p._backward_hooks for p in model.parameters())  # removed at the end


def test_what_adalomo_cannot_do_is_refused_before_training():
    for key, value in (("grad_accum", 2), ("grad_checkpointing", True), ("precision", "fp16")):
        with pytest.raises(ValueError, match=f"{key}: optimizer adalomo updates each weight"):
            TrainParams(optimizer="adalomo", **{key: value})


def test_build_optimizer_gives_adalomo_lmpipes_decay_group():
    model = build_model(TINY_MODEL, 0)
    opt = build_optimizer(model, TrainParams(optimizer="adalomo", lr=0.1, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    # a zero loss: no gradient step, only decay, and only on the linear layers' matrices
    opt.fused_step(model(input_ids=ids).logits.sum() * 0, 0.1, 0.0)
    for n, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        is_matrix = n.endswith("proj.weight")
        assert changed == is_matrix, n
    opt.remove_hooks()


def test_data_parallel_adalomo_is_refused(monkeypatch, tiny_tokens, tokenizer):
    monkeypatch.setattr(loop, "init_distributed", lambda: Dist(rank=0, world=2))
    with pytest.raises(ConfigError, match="adalomo: it updates each weight during backward"):
        loop.Trainer(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
                     TokenSplit.open(tiny_tokens, "val"), TrainParams(optimizer="adalomo"), None,
                     tokenizer.pad_token_id)
