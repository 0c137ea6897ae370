"""The model's section of params.yaml (`teacher.model`, `student.model`): its architecture."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmpipe.core.section import Section


class ModelParams(Section):
    """A Llama-style decoder built from a transformers config (no pretrained weights)."""

    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="grouped-query attention heads; "
                                   "default n_heads")
    d_ff: int | None = Field(None, ge=1, description="MLP width; default 4 * d_model")
    max_seq_len: int = Field(256, ge=16)
    rope_theta: float = Field(10000.0, gt=0.0)
    rope_scaling: Literal["none", "linear", "dynamic", "yarn"] = Field(
        "none", description="RoPE scaling to run past the trained context (context extension)")
    rope_factor: float = Field(1.0, ge=1.0, description="context extension factor for rope_scaling")
    tie_embeddings: bool = True
    init: Literal["hf", "gpt2_scaled", "small", "mitchell"] = Field(
        "hf", description="hf: transformers' default normal(0.02); gpt2_scaled: normal(0.02) with "
        "residual projections scaled by 1/sqrt(2*layers); small: normal(sqrt(2/(5*d))); "
        "mitchell: normal(1/sqrt(fan_in)), residual projections scaled by 1/sqrt(2*(layer+1))")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelParams":
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model ({self.d_model}) is not divisible by n_heads "
                             f"({self.n_heads}); expected a divisor of d_model")
        if (self.d_model // self.n_heads) % 2:
            # RoPE rotates pairs of dimensions: transformers refuses an odd head width
            raise ValueError(f"n_heads: the head width d_model / n_heads = "
                             f"{self.d_model // self.n_heads} is odd; expected an even head width "
                             "(RoPE rotates pairs)")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads: n_heads ({self.n_heads}) is not divisible by n_kv_heads "
                             f"({kv}); expected a divisor of n_heads")
        return self
