"""Model widths for a parameter budget, so that architectures compare at equal parameters.

`width_for_params(params, target)` is the `d_model` that brings `params` (its arch, depth and
arch-specific fields) closest to `target` parameters, counted as `count_parameters` counts them
(tied embeddings once). Counts come from the real transformers model built on the meta device
(no memory, no init), so they stay exact whatever the architecture's layers are.
"""

from __future__ import annotations

import math

import torch

from lmpipe.data.tokenizer import VOCAB_SIZE
from lmpipe.model.build import ARCHITECTURES, count_parameters, model_config
from lmpipe.model.params import ModelParams

MAX_WIDTH = 4096


def width_step(params: ModelParams) -> int:
    """The granularity of d_model the architecture accepts as configured: llama needs an even
    head width (d_model a multiple of 2 * n_heads); mamba2's inner width expand * d_model must
    split into heads of head_dim; hawk's default lru_width (= d_model) must split into
    lru_blocks."""
    if params.arch == "llama":
        return 2 * params.n_heads
    if params.arch == "mamba2":
        return params.head_dim // math.gcd(params.expand, params.head_dim)
    if params.arch == "hawk" and params.lru_width is None:
        return params.lru_blocks
    return 1


def parameters_at(params: ModelParams, d_model: int, vocab: int = VOCAB_SIZE) -> int:
    """The parameter count of `params` at width `d_model` with a `vocab`-token embedding."""
    sized = params.model_copy(update={"d_model": d_model})
    model_class, _ = ARCHITECTURES[params.arch]
    config = model_config(sized)
    config.vocab_size = vocab
    with torch.device("meta"):
        return count_parameters(model_class(config))


def width_for_params(params: ModelParams, target: int, vocab: int = VOCAB_SIZE) -> int:
    """The d_model (a multiple of `width_step`, at least 8) whose model has the parameter count
    nearest `target`. Counts grow with the width, so a bisection finds it."""
    if target <= 0:
        raise ValueError(f"width_for_params: target = {target}; expected a positive parameter count")
    step = width_step(params)
    low, high = max(1, -(-8 // step)), MAX_WIDTH // step  # in units of step
    if parameters_at(params, high * step, vocab) < target:
        raise ValueError(f"width_for_params: {target} parameters need d_model > {MAX_WIDTH} for "
                         f"{params.arch} with {params.n_layers} layers")
    while low < high:  # the least width reaching the target
        mid = (low + high) // 2
        if parameters_at(params, mid * step, vocab) < target:
            low = mid + 1
        else:
            high = mid
    candidates = [w * step for w in (low - 1, low) if w * step >= 8]
    return min(candidates, key=lambda w: abs(parameters_at(params, w, vocab) - target))
