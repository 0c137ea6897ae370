"""lmpipe's model architectures in one table: each `model.arch` of params.yaml, the transformers
`config.model_type` a model of it is saved as, and whether it is recurrent.

    arch     model_type        recurrent
    llama    llama             no: attention, a KV cache, RoPE positions
    mamba    mamba             yes: selective state space (Mamba-1)
    mamba2   mamba2            yes: state space duality (Mamba-2: chunked, matmul-based scan)
    hawk     recurrent_gemma   yes: RecurrentGemma built with recurrent blocks only

A recurrent model reads tokens in order through a state of fixed size: it has no attention map
(no attention_kl, no prefix_lm), no KV cache to share between continuations and no positions to
stretch. Code that reads params looks an architecture up by `arch`; code that holds a saved model,
by its `config.model_type`. How each is built is lmpipe/model/build.py's. The table lives in core
and imports nothing, so that every layer reads it (the params checks before any torch import, the
profiler, the report).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """One architecture: its `model.arch`, its saved `config.model_type`, and whether it is
    recurrent (module docstring)."""

    name: str
    model_type: str
    recurrent: bool


ARCHS: dict[str, Arch] = {arch.name: arch for arch in (
    Arch("llama", "llama", recurrent=False),
    Arch("mamba", "mamba", recurrent=True),
    Arch("mamba2", "mamba2", recurrent=True),
    Arch("hawk", "recurrent_gemma", recurrent=True),
)}
# a section (or a run's params) that does not name its arch is llama: a llama section's dump omits
# `arch`, and every run before architectures existed was llama
DEFAULT_ARCH = "llama"
BY_MODEL_TYPE: dict[str, Arch] = {arch.model_type: arch for arch in ARCHS.values()}
# config.model_type of the recurrent architectures: no attention map, no shareable cache
RECURRENT_TYPES = frozenset(arch.model_type for arch in ARCHS.values() if arch.recurrent)


def model_type(arch: str) -> str:
    """The `config.model_type` a model of `arch` is saved as."""
    return ARCHS[arch].model_type


def arch_of(model_type: str | None) -> str:
    """The `model.arch` a saved model of `model_type` was made as; a model type lmpipe does not
    build (an imported model) counts as llama, as every model did before `arch` existed."""
    found = BY_MODEL_TYPE.get(model_type or "")
    return found.name if found is not None else DEFAULT_ARCH


def is_recurrent(arch: str) -> bool:
    """Whether `arch` (a `model.arch`) is recurrent: no attention, no KV cache, no RoPE."""
    return ARCHS[arch].recurrent
