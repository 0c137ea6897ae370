"""Optimizers (parameter groups, each optimizer learns, weight decay placement) and LR schedules."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from lmpipe.data.tokenizer import VOCAB_SIZE
from lmpipe.model.build import build_model, count_parameters
from lmpipe.model.params import ModelParams
from lmpipe.train.optim import build_optimizer, parameter_groups, set_learning_rate, state_bytes
from lmpipe.train.params import TrainParams
from lmpipe.train.schedule import lr_at

TINY = ModelParams(d_model=16, n_layers=1, n_heads=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; with two threads on a busy 2-core machine, OpenMP's
    spin-waiting made one 21-step loss test take 10 s instead of 0.05 s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


LINEAR = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
    f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]


def _group_names(model, wd=0.1):
    decay, no_decay = parameter_groups(model, wd)
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    return [n for n, _ in decay["params"]], [n for n, _ in no_decay["params"]]


@pytest.mark.parametrize("tie", [True, False])
def test_decay_only_on_linear_matrices(tie):
    model = build_model(ModelParams(d_model=16, n_layers=2, n_heads=2, tie_embeddings=tie), seed=0)
    decay, no_decay = _group_names(model)
    expected = {f"model.layers.{i}.{p}.weight" for i in range(2) for p in LINEAR}
    assert set(decay) == expected and len(decay) == len(expected)
    assert "model.embed_tokens.weight" in no_decay and "model.norm.weight" in no_decay
    assert {f"model.layers.{i}.{n}.weight" for i in range(2)
            for n in ("input_layernorm", "post_attention_layernorm")} <= set(no_decay)
    assert ("lm_head.weight" in no_decay) is (not tie)  # tied head is the embedding, listed once
    assert set(decay).isdisjoint(no_decay)
    groups = parameter_groups(model, 0.1)
    tensors = [p for g in groups for _, p in g["params"]]
    assert len({id(p) for p in tensors}) == len(tensors)
    assert sum(p.numel() for p in tensors) == count_parameters(model)


def test_frozen_parameters_are_left_out():
    model = build_model(TINY, seed=0)
    model.model.norm.weight.requires_grad_(False)
    _, no_decay = _group_names(model)
    assert "model.norm.weight" not in no_decay


@pytest.mark.parametrize("name, lr", [("adamw", 1e-2), ("sgd", 0.5), ("adafactor", 0.1),
                                      ("lion", 1e-2), ("muon", 1e-2)])
def test_each_optimizer_reduces_the_loss(name, lr):
    if name == "lion":
        pytest.importorskip("lion_pytorch")
    model = build_model(TINY, seed=0)
    opt = build_optimizer(model, TrainParams(optimizer=name, lr=lr))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    ids = torch.randint(0, VOCAB_SIZE, (4, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(21):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", ["adamw", "sgd", "adafactor", "lion", "muon", "adamw8bit"])
def test_weight_decay_hits_only_the_decay_group(name):
    """With zero gradients every optimizer reduces to its decay step: p <- p * (1 - lr * wd)."""
    if name == "lion":
        pytest.importorskip("lion_pytorch")
    model = build_model(TINY, seed=0)
    lr, wd = 0.1, 0.5
    opt = build_optimizer(model, TrainParams(optimizer=name, lr=lr, weight_decay=wd))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decay_names = set(opt.param_groups[0]["param_names"])
    for n, p in model.named_parameters():
        factor = 1 - lr * wd if n in decay_names else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=f"{name}: {n}")


def test_muon_steps_the_matrices_orthogonally_and_adamw_the_rest():
    model = build_model(TINY, seed=0)
    lr = 1e-3
    opt = build_optimizer(model, TrainParams(optimizer="muon", lr=lr, weight_decay=0.0))
    muon, adamw = opt.optimizers
    decay, no_decay = _group_names(model)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert muon.param_groups[0]["param_names"] == decay
    assert adamw.param_groups[0]["param_names"] == no_decay
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=gen)
        if name in decay:  # directions of sizes 0.1 to 10 (U diag(s) V^T), as gradients have
            k = min(p.shape)
            u = torch.linalg.qr(torch.randn(p.shape[0], k, generator=gen))[0]
            v = torch.linalg.qr(torch.randn(p.shape[1], k, generator=gen))[0]
            p.grad = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T
    opt.step()
    for name, p in model.named_parameters():
        step = before[name] - p.detach()
        if name in decay:
            # the update is the gradient's orthogonal polar factor times lr * 0.2 * sqrt(max
            # dim): five Newton-Schulz steps of Muon's quintic leave the singular values in
            # about [0.5, 1.2], not the gradient's spread
            singular = torch.linalg.svdvals(step / (lr * 0.2 * max(p.shape) ** 0.5))
            assert 0.5 < singular.min() and singular.max() < 1.25, (name, singular)
            spread = torch.linalg.svdvals(p.grad)
            assert spread.max() / spread.min() > 30  # what an unorthogonalized step would carry
        else:  # AdamW's first step: lr * g / |g| (bias-corrected moments), a sign step
            torch.testing.assert_close(step, lr * p.grad.sign(), rtol=1e-4, atol=1e-8)


def test_muon_resumes_from_its_saved_state(tmp_path):
    ids = torch.randint(0, VOCAB_SIZE, (4, 32), generator=torch.Generator().manual_seed(0))

    def steps(model, opt, n):
        for _ in range(n):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    tp = TrainParams(optimizer="muon", lr=1e-2)
    whole = build_model(TINY, seed=0)
    opt = build_optimizer(whole, tp)
    steps(whole, opt, 3)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    resumed = build_model(TINY, seed=0)
    resumed.load_state_dict(whole.state_dict())
    opt2 = build_optimizer(resumed, tp)
    opt2.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    steps(whole, opt, 2)
    steps(resumed, opt2, 2)
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    adamw_state = build_optimizer(build_model(TINY, seed=0), TrainParams()).state_dict()
    with pytest.raises(ValueError, match="saved with another optimizer"):
        opt2.load_state_dict(adamw_state)


def test_adamw8bit_keeps_the_large_matrices_moments_in_8_bits_and_resumes(tmp_path):
    model = build_model(ModelParams(d_model=64, n_layers=1, n_heads=2), seed=0)
    tp = TrainParams(optimizer="adamw8bit", lr=1e-2)
    opt = build_optimizer(model, tp)
    ids = torch.randint(0, VOCAB_SIZE, (4, 32), generator=torch.Generator().manual_seed(0))

    def steps(model, opt, n):
        losses = []
        for _ in range(n):
            loss = model(input_ids=ids, labels=ids).loss
            losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return losses

    losses = steps(model, opt, 3)
    q_proj = model.model.layers[0].self_attn.q_proj.weight  # 4,096 values: 16 blocks of 256
    state = opt.state[q_proj]
    moments = sum(t.codes.numel() * t.codes.element_size() + t.scale.numel() * t.scale.element_size()
                  for t in (state["exp_avg"], state["exp_avg_sq"]))
    assert moments < 0.3 * 2 * q_proj.numel() * 4  # against AdamW's two fp32 moments
    norm = model.model.norm.weight  # 64 values: too small to quantize
    assert opt.state[norm]["exp_avg"].dtype == torch.float32
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    resumed = build_model(ModelParams(d_model=64, n_layers=1, n_heads=2), seed=0)
    resumed.load_state_dict(model.state_dict())
    opt2 = build_optimizer(resumed, tp)
    opt2.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    losses += steps(model, opt, 2)
    assert steps(resumed, opt2, 2) == losses[-2:]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_the_schedules_learning_rate_reaches_the_step_of_float_and_tensor_lr_optimizers(name):
    """The loop writes each step's lr with set_learning_rate; torchao keeps lr as a tensor and
    refused the float the loop used to write. A step after setting lr=a from an optimizer built
    with lr=b equals a step of one built with lr=a."""
    if name == "adamw8bit":
        pytest.importorskip("torchao")

    def one_step(built_lr, set_lr):
        model = build_model(ModelParams(d_model=64, n_layers=1, n_heads=2), seed=0)
        opt = build_optimizer(model, TrainParams(optimizer=name, lr=built_lr))
        if set_lr is not None:
            set_learning_rate(opt, set_lr)
        _one_step(model, opt)
        return model.model.layers[0].self_attn.q_proj.weight.detach().clone(), opt

    moved, opt = one_step(1e-2, 3e-3)
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(3e-3)
    direct, _ = one_step(3e-3, None)
    assert torch.equal(moved, direct)
    assert not torch.equal(moved, one_step(1e-2, None)[0])


def test_adamw8bit_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(ImportError, match=r"pip install 'lmpipe\[lowbit\]'"):
        build_optimizer(build_model(TINY, seed=0), TrainParams(optimizer="adamw8bit"))


def _one_step(model, opt):
    ids = torch.randint(0, VOCAB_SIZE, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def test_state_bytes_counts_each_optimizers_buffers():
    """Counted from the model's parameters, not from the optimizer: AdamW keeps two fp32 moments
    and a 4-byte step a tensor, SGD one momentum buffer, Muon a momentum buffer on the hidden
    matrices and AdamW's on the rest; nothing before the first step."""
    def measured(name):
        model = build_model(TINY, seed=0)
        opt = build_optimizer(model, TrainParams(optimizer=name))
        before = state_bytes(opt)
        _one_step(model, opt)
        return model, before, state_bytes(opt)

    model, before, adamw = measured("adamw")
    tensors = [p for p in model.parameters()]
    values = sum(p.numel() for p in tensors)
    assert before == 0
    assert adamw == 8 * values + 4 * len(tensors)
    assert measured("sgd")[2] == 4 * values
    model, _, muon = measured("muon")
    matrices = [m.weight for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    in_matrices = sum(w.numel() for w in matrices)
    assert muon == 4 * in_matrices + 8 * (values - in_matrices) + 4 * (len(tensors) - len(matrices))


def test_state_bytes_counts_the_8_bit_moments_inside_torchaos_tensors():
    pytest.importorskip("torchao")
    model = build_model(ModelParams(d_model=64, n_layers=1, n_heads=2), seed=0)
    opt = build_optimizer(model, TrainParams(optimizer="adamw8bit"))
    _one_step(model, opt)
    q_proj = model.model.layers[0].self_attn.q_proj.weight  # 4,096 values: 16 blocks of 256
    # per quantized moment: a byte a value, an fp32 scale a block of 256, its 256-entry fp32 code
    # map; then the fp32 step
    assert state_bytes(type("One", (), {"state": {q_proj: opt.state[q_proj]}})()) == \
        2 * (4096 + 16 * 4 + 256 * 4) + 4
    adamw = 8 * sum(p.numel() for p in model.parameters())
    assert state_bytes(opt) < 0.5 * adamw


def test_adamw_uses_the_fused_kernel_on_cpu():
    opt = build_optimizer(build_model(TINY, seed=0), TrainParams(optimizer="adamw"))
    assert opt.defaults["fused"] is True
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_sgd_momentum_is_beta1():
    opt = build_optimizer(build_model(TINY, seed=0), TrainParams(optimizer="sgd", beta1=0.8))
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is False


def test_lion_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'lmpipe\[lion\]'"):
        build_optimizer(build_model(TINY, seed=0), TrainParams(optimizer="lion"))


# --- schedules ---------------------------------------------------------------------------------

W, T, BASE, FLOOR = 10, 110, 2.0, 0.1


def lrs(shape):
    return [lr_at(s, BASE, W, T, FLOOR, shape=shape) for s in range(T + 1)]


@pytest.mark.parametrize("shape", ["cosine", "linear", "constant"])
def test_warmup_is_linear_and_reaches_base(shape):
    x = lrs(shape)
    assert x[0] == pytest.approx(BASE / W) and x[4] == pytest.approx(BASE * 5 / W)
    assert x[W - 1] == pytest.approx(BASE) and x[W] == pytest.approx(BASE)


def test_cosine_is_the_default_and_has_its_midpoint_and_quarter():
    assert lrs("cosine") == [lr_at(s, BASE, W, T, FLOOR) for s in range(T + 1)]
    x = lrs("cosine")
    assert x[W + 50] == pytest.approx(BASE * (FLOOR + (1 - FLOOR) * 0.5))
    assert x[W + 25] == pytest.approx(BASE * (FLOOR + (1 - FLOOR) * (1 + math.cos(math.pi / 4)) / 2))
    assert x[T] == pytest.approx(BASE * FLOOR) and x[T] == min(x)


def test_linear_decays_in_a_straight_line():
    x = lrs("linear")
    assert x[W + 50] == pytest.approx(BASE * (FLOOR + (1 - FLOOR) * 0.5))
    assert x[W + 25] == pytest.approx(BASE * (FLOOR + (1 - FLOOR) * 0.75))
    steps = [x[s] - x[s + 1] for s in range(W, T)]
    assert max(steps) == pytest.approx(min(steps))
    assert x[T] == pytest.approx(BASE * FLOOR)
    assert lr_at(T + 50, BASE, W, T, FLOOR, shape="linear") == pytest.approx(BASE * FLOOR)


def test_constant_stays_at_base_after_warmup():
    assert lrs("constant")[W:] == [BASE] * (T + 1 - W)


def test_no_warmup_starts_at_base_and_unknown_shape_is_refused():
    assert lr_at(0, BASE, 0, T, FLOOR, shape="linear") == BASE
    with pytest.raises(ValueError, match="cosine, linear, constant"):
        lr_at(0, BASE, W, T, FLOOR, shape="step")
