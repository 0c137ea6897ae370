"""oneDNN linears (lmpipe/train/cpu_linear.py): the same values and gradients as torch's own
nn.Linear, used exactly where they should be, and gone when training ends."""

import pytest
import torch
import torch.nn.functional as F

from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.train.cpu_linear import (
    OneDNNLinear,
    TransposedInputs,
    available,
    use_onednn_linears,
    use_torch_linears,
)
from lmpipe.train.loop import train
from lmpipe.train.params import TrainParams
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.skipif(not available(), reason="this torch has no oneDNN")


# narrowing, widening and square layers: the weight gradient copies a different operand
@pytest.mark.parametrize(("d_in", "d_out", "bias"), [(48, 40, True), (48, 40, False),
                                                     (40, 48, True), (40, 48, False),
                                                     (48, 48, True)])
def test_values_and_gradients_equal_torchs_linear(d_in, d_out, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(d_in, d_out, bias=bias)
    reference = torch.nn.Linear(d_in, d_out, bias=bias)
    reference.load_state_dict(layer.state_dict())
    assert use_onednn_linears(layer) == 1
    x = torch.randn(3, 7, d_in, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, expected = layer(x), reference(x_ref)
    assert out.grad_fn.name() == "_OneDNNLinearFunctionBackward"  # not torch's path
    assert out.shape == (3, 7, d_out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)
    # and against the definition, not only against another kernel
    by_definition = upstream.reshape(-1, d_out).t() @ x_ref.detach().reshape(-1, d_in)
    torch.testing.assert_close(layer.weight.grad, by_definition, rtol=1e-4, atol=1e-4)
    assert layer.weight.grad.is_contiguous()


def test_linears_reading_one_input_share_its_transposed_copy_and_get_their_own_gradients():
    # q, k and v (and gate and up) read one tensor: their weight gradients reuse one copy of it
    torch.manual_seed(0)
    layers = [torch.nn.Linear(48, d_out, bias=False) for d_out in (48, 56, 64)]
    for layer in layers:
        use_onednn_linears(layer)
    x = torch.randn(3, 7, 48)
    upstream = [torch.randn(3, 7, layer.out_features) for layer in layers]
    outputs = [layer(x) for layer in layers]
    torch.autograd.backward(outputs, upstream)
    for layer, g in zip(layers, upstream):
        by_definition = g.reshape(-1, layer.out_features).t() @ x.reshape(-1, 48)
        torch.testing.assert_close(layer.weight.grad, by_definition, rtol=1e-4, atol=1e-4)


def test_the_shared_copy_is_reused_only_for_the_same_values():
    cache = TransposedInputs()
    rows = torch.randn(12, 5)
    first = cache.of(rows)
    assert cache.of(rows.view(12, 5)) is first  # another view of the same memory
    torch.testing.assert_close(first, rows.t())
    rows.add_(1.0)  # changed in place: the version counter moved, so a fresh copy
    fresh = cache.of(rows)
    assert fresh is not first
    torch.testing.assert_close(fresh, rows.t())
    twin = rows.clone()  # the same values elsewhere: its own copy, equal
    assert cache.of(twin) is not fresh
    torch.testing.assert_close(cache.of(twin), rows.t())
    cache.clear()
    assert cache.source is None and cache.copy is None


def test_autocast_and_other_dtypes_keep_torchs_path():
    layer = torch.nn.Linear(16, 8)
    use_onednn_linears(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(4, 16))
    assert out.dtype == torch.bfloat16  # autocast applied: torch's own linear ran
    assert layer.double()(torch.randn(4, 16, dtype=torch.float64)).dtype == torch.float64


def test_only_plain_linears_change_and_the_state_dict_does_not():
    class Sub(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Sub(4, 4), torch.nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_onednn_linears(model) == 2
    assert [type(m) for m in model] == [OneDNNLinear, Sub, OneDNNLinear]
    assert model.state_dict().keys() == before.keys()
    use_torch_linears(model)
    assert [type(m) for m in model] == [torch.nn.Linear, Sub, torch.nn.Linear]


def _linear_kinds(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("qat", [False, True])
def test_training_runs_on_onednn_and_hands_back_torch_linears(tiny_tokens, tokenizer, qat):
    """During the run the eval hook sees oneDNN linears (QAT's BitLinear layers untouched); the
    model the run returns has plain nn.Linear again; and the run's losses equal the same run on
    torch's linears, so the gradients it trained with were right."""
    seen: list[set[str]] = []

    def hook(model: torch.nn.Module) -> dict[str, float]:
        seen.append(_linear_kinds(model))
        return {}

    summaries = []
    for kernel in ("onednn", "torch"):
        seen.clear()
        model = build_model(TINY_MODEL, 0)
        tp = TrainParams(steps=12, batch_size=8, lr=1e-2, warmup_steps=1, log_every=12,
                         eval_every=6, cpu_linear=kernel, qat=qat)
        summaries.append(train(model, TokenSplit.open(tiny_tokens, "train"),
                               TokenSplit.open(tiny_tokens, "val"), tp, None,
                               tokenizer.pad_token_id, eval_hook=hook))
        expected = ({"BitLinear158"} if qat else set()) | (
            {"OneDNNLinear"} if kernel == "onednn" else {"Linear"})
        assert seen and all(kinds == expected for kinds in seen), (kernel, seen)
        assert "OneDNNLinear" not in _linear_kinds(model)
    onednn, reference = summaries
    assert onednn["final_val_loss"] < 0.9 * onednn["initial_val_loss"]  # it learned
    assert onednn["final_val_loss"] == pytest.approx(reference["final_val_loss"], rel=1e-4)
    assert onednn["final_train_loss"] == pytest.approx(reference["final_train_loss"], rel=1e-4)


def test_the_linear_op_is_exactly_a_matrix_product():
    """The op under everything, on integer-valued floats (exact in fp32): no reduced precision."""
    a = torch.randint(-8, 8, (33, 70)).float()
    w = torch.randint(-8, 8, (19, 70)).float()
    out = torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
    assert torch.equal(out, (a.double() @ w.double().t()).float())
    assert torch.equal(out, F.linear(a, w))
