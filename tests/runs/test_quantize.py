"""Ternary absmean quantization: values, scale, which layers, and bad input."""

import pytest
import torch

from lmpipe.quant.ternary import quantize_ternary_, ternarize


def test_ternarize_matches_the_absmean_formula():
    w = torch.tensor([[0.5, -0.1, 0.0], [1.2, -0.9, 0.2]])
    codes, gamma = ternarize(w)
    assert gamma.item() == pytest.approx(w.abs().mean().item())  # 0.4833...
    assert codes.tolist() == [[1.0, -0.0, 0.0], [1.0, -1.0, 0.0]]


def test_model_linears_become_three_valued_and_lm_head_is_skipped(tiny_model):
    head_before = tiny_model.lm_head.weight.clone()
    scales = quantize_ternary_(tiny_model, skip=["lm_head"])
    assert len(scales) == 7  # q, k, v, o, gate, up, down in the one layer
    for name, module in tiny_model.named_modules():
        if name in scales:
            values = module.weight.unique()
            assert len(values) <= 3
            assert torch.allclose(values.abs().max(), torch.tensor(scales[name]))
    assert torch.equal(tiny_model.lm_head.weight, head_before)


def test_no_linear_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no nn.Linear layers"):
        quantize_ternary_(torch.nn.Sequential(torch.nn.Embedding(4, 4)), skip=[])
