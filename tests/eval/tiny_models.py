"""Tiny models the generation tests share: a llama with noisy weights (logits of order 1, so a
wrong position, key or cached prefix changes its greedy tokens, where a fresh model's logits are
all near zero) and a model steered by token rules on top of its own predictions."""

from __future__ import annotations

import torch

from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams


def noisy_llama(max_seq_len: int = 512, noise: float = 0.5, seed: int = 1) -> torch.nn.Module:
    """Two layers, grouped-query attention (2 heads, 1 KV head), d=16, Gaussian noise of scale
    `noise` (seeded) on every weight."""
    model = build_model(ModelParams(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                                    max_seq_len=max_seq_len), seed=0).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(noise * torch.randn(weight.shape, generator=generator))
    return model


def steered(model: torch.nn.Module, tokenizer, rules: dict[str, str]) -> torch.nn.Module:
    """`model` with rules on top of its logits: after a token of `rules` the token it names is
    certain, and the tokens rules name are never written otherwise. Everything else is the
    model's own (random) prediction, through its own cache."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) if t.startswith("<|") else tokenizer(
        t, add_special_tokens=False)["input_ids"][0] for pair in rules.items() for t in pair}
    table = torch.zeros(len(tokenizer), len(tokenizer))
    table[:, [ids[then] for then in rules.values()]] = -1e4
    for after, then in rules.items():
        table[ids[after], ids[then]] = 1e4

    class Steered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids, **kwargs):
            out = self.inner(input_ids=input_ids, **kwargs)
            out.logits[:, -1] += table[input_ids[:, -1]]
            return out

    return Steered()
