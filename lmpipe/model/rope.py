"""Context-length extension through RoPE scaling (transformers 5 `config.rope_parameters`).

  linear   position interpolation (Chen et al. 2023): every rotary frequency divided by `factor`.
  dynamic  dynamic NTK (transformers' "dynamic"): frequencies unchanged up to
           `max_position_embeddings`; past it the RoPE base grows with the sequence length.
  yarn     YaRN (Peng et al. 2023): high frequencies kept, low ones interpolated by `factor`, with
           a ramp between, and cos/sin scaled by 0.1 * ln(factor) + 1.

transformers reads `max_position_embeddings` differently per type, which `extend_context` respects:
for "dynamic" it is the length past which scaling starts (the trained length), so it is *not* raised
(raising it would switch the scaling off below the new length); "yarn" keeps the trained length in
`original_max_position_embeddings`; "linear" ignores it.
"""

from __future__ import annotations

from typing import Any

import torch

from lmpipe.model.params import ModelParams

SCALINGS = ("none", "linear", "dynamic", "yarn")


def _scaled(rope_scaling: str, rope_theta: float, factor: float,
            trained_len: int) -> dict[str, Any]:
    if rope_scaling not in SCALINGS:
        raise ValueError(f"model.rope_scaling: unknown scaling {rope_scaling!r}; "
                         f"expected one of {', '.join(SCALINGS)}")
    if rope_scaling == "none":
        return {"rope_type": "default", "rope_theta": float(rope_theta)}
    if not factor >= 1.0:
        raise ValueError(f"model.rope_factor: must be >= 1 for rope_scaling={rope_scaling!r}, "
                         f"got {factor}")
    params = {"rope_type": rope_scaling, "rope_theta": float(rope_theta), "factor": float(factor)}
    if rope_scaling == "yarn":
        params["original_max_position_embeddings"] = int(trained_len)
    return params


def rope_parameters(params: ModelParams) -> dict[str, Any]:
    """`rope_parameters` for a fresh model: `max_seq_len` is the trained length, `rope_factor` the
    scaling. Pass it to LlamaConfig together with max_position_embeddings=params.max_seq_len."""
    return _scaled(params.rope_scaling, params.rope_theta, params.rope_factor, params.max_seq_len)


def _trained_length(config) -> int:
    """The context the model was trained at (before any earlier extension)."""
    current = config.rope_parameters or {}
    return int(current.get("original_max_position_embeddings") or config.max_position_embeddings)


def extend_context(model: torch.nn.Module, new_max_seq_len: int, rope_scaling: str,
                   factor: float) -> torch.nn.Module:
    """Scale `model`'s RoPE in place to run on `new_max_seq_len` tokens and return the model.

    `factor` is relative to the unscaled RoPE the model was trained with (a second call replaces
    the first one's scaling; it does not compound). "none" keeps the current rope parameters and only
    raises `max_position_embeddings`. For "dynamic", `max_position_embeddings` stays the trained
    length (see the module docstring). The rotary embedding modules are rebuilt from the new config,
    so the model in memory behaves exactly like the same model saved and reloaded.
    """
    config = model.config
    trained_len = _trained_length(config)
    if new_max_seq_len < config.max_position_embeddings:
        raise ValueError(f"extend_context: new_max_seq_len ({new_max_seq_len}) is shorter than the "
                         f"model's max_position_embeddings ({config.max_position_embeddings})")
    theta = (config.rope_parameters or {}).get("rope_theta", getattr(config, "default_theta", 1e4))
    if rope_scaling == "none":
        new_params = dict(config.rope_parameters)
        config.max_position_embeddings = int(new_max_seq_len)
    else:
        new_params = _scaled(rope_scaling, theta, factor, trained_len)
        config.max_position_embeddings = (
            trained_len if rope_scaling == "dynamic" else int(new_max_seq_len))
    config.rope_parameters = new_params
    config.validate_rope()

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if child_name == "rotary_emb":
                buffer = next(child.buffers(), None)
                device = buffer.device if buffer is not None else None
                setattr(parent, child_name, type(child)(config=config).to(device))
                replaced += 1
    if not replaced:
        raise ValueError(f"extend_context: {type(model).__name__} has no `rotary_emb` module")
    return model
