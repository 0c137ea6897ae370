"""The model's section of params.yaml (`teacher.model`, `student.model`): its architecture."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from lmpipe.core.section import Section

ARCHS = ("llama", "mamba", "mamba2", "hawk")
# The fields each architecture reads beyond the shared ones (d_model, n_layers, max_seq_len,
# tie_embeddings, init). A dump leaves out the others, so a llama section dumps exactly as it did
# before `arch` existed (its runs' params.json unchanged) and a mamba one shows no attention heads.
OWN_FIELDS = {
    "llama": ("n_heads", "n_kv_heads", "d_ff", "rope_theta", "rope_scaling", "rope_factor"),
    "mamba": ("arch", "d_state", "expand", "d_conv"),
    "mamba2": ("arch", "d_state", "expand", "d_conv", "head_dim"),
    "hawk": ("arch", "d_ff", "d_conv", "lru_width", "lru_blocks"),
}


class ModelParams(Section):
    """A decoder built from a transformers config (no pretrained weights): `arch` picks the
    transformers class (lmpipe/model/build.py); fields that an architecture does not have are
    ignored by it."""

    arch: Literal["llama", "mamba", "mamba2", "hawk"] = Field(
        "llama", description="llama: attention (LlamaForCausalLM); mamba: selective state space "
        "(MambaForCausalLM); mamba2: state space duality, a chunked matmul scan "
        "(Mamba2ForCausalLM); hawk: gated linear RNN (RecurrentGemmaForCausalLM with recurrent "
        "blocks only)")
    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1, description="llama: attention heads")
    n_kv_heads: int | None = Field(None, ge=1, description="llama: grouped-query attention heads; "
                                   "default n_heads")
    d_ff: int | None = Field(None, ge=1, description="llama, hawk: MLP width; default 4 * d_model "
                             "(mamba and mamba2 have no MLP)")
    max_seq_len: int = Field(256, ge=16, description="the longest training document; llama: the "
                             "context of its positions")
    rope_theta: float = Field(10000.0, gt=0.0, description="llama: RoPE base")
    rope_scaling: Literal["none", "linear", "dynamic", "yarn"] = Field(
        "none", description="llama: RoPE scaling to run past the trained context (context "
        "extension)")
    rope_factor: float = Field(1.0, ge=1.0, description="llama: context extension factor for "
                               "rope_scaling")
    tie_embeddings: bool = True
    init: Literal["hf", "gpt2_scaled", "small", "mitchell"] = Field(
        "hf", description="hf: transformers' default normal(0.02); gpt2_scaled: normal(0.02) with "
        "residual projections scaled by 1/sqrt(2*layers); small: normal(sqrt(2/(5*d))); "
        "mitchell: normal(1/sqrt(fan_in)), residual projections scaled by 1/sqrt(2*(layer+1)); "
        "mamba, mamba2 and hawk: hf only")
    d_state: int = Field(16, ge=1, description="mamba: SSM state size per channel "
                         "(MambaConfig.state_size); mamba2: per head channel "
                         "(Mamba2Config.state_size)")
    expand: int = Field(2, ge=1, description="mamba, mamba2: the mixer's inner width is "
                        "expand * d_model")
    d_conv: int = Field(4, ge=2, description="mamba, mamba2, hawk: kernel width of the causal "
                        "(depthwise) convolution before the recurrence")
    head_dim: int = Field(16, ge=1, description="mamba2: channels per SSM head (each head has "
                          "its own decay); must divide expand * d_model, which makes "
                          "expand * d_model / head_dim heads")
    lru_width: int | None = Field(None, ge=1, description="hawk: width of the RG-LRU recurrence; "
                                  "default d_model")
    lru_blocks: int = Field(2, ge=1, description="hawk: diagonal blocks of the RG-LRU's gate "
                            "matrices (RecurrentGemmaConfig.num_attention_heads); must divide "
                            "lru_width")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelParams:
        if self.arch != "llama":  # attention heads and RoPE are llama's alone
            return self
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

    @model_validator(mode="after")
    def _recurrent_fields(self) -> ModelParams:
        if self.arch == "llama":
            return self
        if self.init != "hf":
            # lmpipe's schemes redraw every Linear and set norms to 1: that would wipe Mamba's
            # dt bias (inverse-softplus time steps) and double RecurrentGemma's (1 + w) norms
            raise ValueError(f"init: {self.init!r} is a scheme for llama's layers; expected 'hf' "
                             f"for arch {self.arch} (its own initialization)")
        if self.arch == "mamba2" and (self.expand * self.d_model) % self.head_dim:
            raise ValueError(f"head_dim: the inner width expand * d_model = {self.expand} * "
                             f"{self.d_model} = {self.expand * self.d_model} is not divisible by "
                             f"head_dim ({self.head_dim}); expected a divisor of it (e.g. "
                             "d_model a multiple of head_dim / gcd(expand, head_dim))")
        if self.arch == "hawk" and self.hawk_lru_width % self.lru_blocks:
            raise ValueError(f"lru_blocks: lru_width ({self.hawk_lru_width}) is not divisible by "
                             f"lru_blocks ({self.lru_blocks}); expected a divisor of lru_width")
        return self

    @model_serializer(mode="wrap")
    def _arch_fields_only(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        foreign = {f for fields in OWN_FIELDS.values() for f in fields} - set(OWN_FIELDS[self.arch])
        return {key: value for key, value in data.items() if key not in foreign}

    @property
    def hawk_lru_width(self) -> int:
        """The RG-LRU width hawk builds: lru_width, default d_model."""
        return self.lru_width or self.d_model

    @property
    def mlp_width(self) -> int:
        """The MLP width llama and hawk build: d_ff, default 4 * d_model."""
        return self.d_ff or 4 * self.d_model
