"""Quantization-aware training: the BitLinear forward, straight-through gradients, the lambda
warm-up, conversion of a model, and a real QAT run through the training loop."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams
from lmpipe.quant.bitlinear import (
    BitLinear158,
    convert_to_bitlinear,
    qat_lambda,
    quantize_activations,
    set_lambda,
)
from lmpipe.quant.ternary import ternarize


def test_activation_quantization_is_per_token_absmax_int8():
    x = torch.tensor([[0.5, -1.0, 0.25], [10.0, 3.0, -0.01]])
    q = quantize_activations(x)
    for row in range(2):
        scale = 127 / x[row].abs().max()
        torch.testing.assert_close(q[row], (x[row] * scale).round().clamp(-128, 127) / scale)
    assert len(torch.unique(q[0] * 127 / 1.0)) == 3  # integer grid of the row's own scale


def test_bitlinear_forward_and_straight_through_gradient():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(3, 8, requires_grad=True)
    plain = layer(x)
    layer.__class__ = BitLinear158
    set_lambda(layer, 0.0)
    torch.testing.assert_close(layer(x), plain)  # lambda 0: full precision
    set_lambda(layer, 1.0)
    codes, gamma = ternarize(layer.weight.detach())
    x_q = quantize_activations(x.detach())
    expected = F.linear(x_q, codes * gamma, layer.bias)
    out = layer(x)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    out.backward(g)
    # straight through: the gradient w.r.t. the latent weights is that of the quantized product
    torch.testing.assert_close(layer.weight.grad, g.t() @ x_q)
    torch.testing.assert_close(x.grad, g @ (codes * gamma))


def _reference_bitlinear(layer: torch.nn.Linear, x: torch.Tensor, lam: float) -> torch.Tensor:
    """The straight-through estimator written with .detach(), as BitNet's paper gives it."""
    codes, gamma = ternarize(layer.weight)
    weight = layer.weight + lam * (codes * gamma - layer.weight).detach()
    x = x + lam * (quantize_activations(x) - x).detach()
    return F.linear(x, weight, layer.bias)


def test_layers_reading_one_input_match_the_detach_formula_in_values_and_gradients():
    """q, k, v (and gate, up) read the same tensor: the shared activation quantization must give
    each layer what its own would, and the input's gradient must sum over all of them."""
    torch.manual_seed(0)
    lam = 0.6
    layers = [torch.nn.Linear(8, n) for n in (5, 3, 4)]
    x_ref = torch.randn(2, 3, 8, requires_grad=True)
    ref = [_reference_bitlinear(layer, x_ref, lam) for layer in layers]
    sum(out.square().sum() for out in ref).backward()
    ref_weight_grads = [layer.weight.grad.clone() for layer in layers]
    for layer in layers:
        layer.weight.grad = None
        layer.__class__ = BitLinear158
        set_lambda(layer, lam)
    x = x_ref.detach().clone().requires_grad_()
    outs = [layer(x) for layer in layers]
    for out, expected in zip(outs, ref):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    sum(out.square().sum() for out in outs).backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for layer, expected in zip(layers, ref_weight_grads):
        torch.testing.assert_close(layer.weight.grad, expected)
    # the same tensor changed in place, or another lambda, is quantized afresh
    with torch.no_grad():
        x.mul_(3.0)
    torch.testing.assert_close(layers[0](x), _reference_bitlinear(layers[0], x, lam).detach())
    set_lambda(layers[0], 1.0)
    torch.testing.assert_close(layers[0](x), _reference_bitlinear(layers[0], x, 1.0).detach())
    # an output computed without a graph is not handed to a pass that needs one
    with torch.no_grad():
        layers[1](x)
    out = layers[1](x)
    assert out.requires_grad
    out.sum().backward()


def test_lambda_warm_up_schedules():
    assert qat_lambda(0, 100) == 0.0 and qat_lambda(50, 100) == 0.5 and qat_lambda(100, 100) == 1.0
    assert qat_lambda(7, 0) == 1.0
    sig = [qat_lambda(s, 100, "sigmoid") for s in range(0, 101, 10)]
    assert sig[0] == pytest.approx(0.0, abs=1e-12) and sig[-1] == 1.0
    assert sig[5] == pytest.approx(0.5) and all(a < b for a, b in zip(sig, sig[1:]))
    assert sig[1] < 0.1  # slow start: the point of the sigmoid


def test_conversion_keeps_weights_and_skips_the_head():
    model = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = convert_to_bitlinear(model, ["lm_head"])
    assert len(names) == 7 and "lm_head" not in names
    assert type(model.lm_head) is torch.nn.Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no nn.Linear layers outside skip_modules"):
        convert_to_bitlinear(torch.nn.Sequential(torch.nn.Embedding(4, 4)), [])


def test_qat_run_through_the_training_loop_warms_up_and_learns(tiny_tokens, tokenizer, tmp_path):
    from lmpipe.core.run_folder import RunLog
    from lmpipe.data.tokens import TokenSplit
    from lmpipe.train.loop import train

    model = build_model(ModelParams(d_model=32, n_layers=1, n_heads=2), seed=0)
    tp = TrainParams(steps=40, batch_size=8, lr=3e-3, warmup_steps=5, log_every=10, eval_every=40,
                     qat=True, qat_warmup_steps=20)
    with RunLog(tmp_path / "run", "train", "qat", {}) as run:
        summary = train(model, TokenSplit.open(tiny_tokens, "train"),
                        TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    lams = [r["qat_lambda"] for r in records if "qat_lambda" in r]
    assert lams == [0.45, 0.95, 1.0, 1.0]  # logged after steps 10, 20, 30, 40 (lambda of step-1)
    assert isinstance(model.model.layers[0].mlp.up_proj, BitLinear158)
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 1.0
