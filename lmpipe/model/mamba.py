"""The Mamba architecture (`model.arch: mamba`): transformers' MambaConfig from lmpipe's params.

Mamba (Gu & Dao 2023) replaces attention with a selective state space: each block projects to
an inner width `expand * d_model`, runs a causal depthwise convolution of width `d_conv`, then a
recurrence with a state of `d_state` per inner channel. It has no MLP and no positions.

Without mamba_ssm's CUDA kernels transformers scans a sequence one position at a time, and the
backward of that loop grows with the sequence; lmpipe's training loop switches the mixers to
mamba.py's parallel scan (`parallel_scans`; the mambapy package, a dependency): ~4x faster
training on CPU (bench/archs.py), the same function. Inference keeps the loop, which is faster
without gradients for prompts of a few hundred tokens, and the saved config stays as built.
"""

from __future__ import annotations

import torch
from transformers import MambaConfig

from lmpipe.core import protocol
from lmpipe.model.params import ModelParams


def ssm_fields(params: ModelParams, ids: dict[str, int]) -> dict[str, object]:
    """The config fields Mamba and Mamba-2 share; `ids`: the protocol's token ids and "vocab"."""
    return {
        "vocab_size": ids["vocab"],
        "hidden_size": params.d_model,
        "num_hidden_layers": params.n_layers,
        "state_size": params.d_state,
        "expand": params.expand,
        "conv_kernel": params.d_conv,
        # no bias in the projections: a padded position's zeroed input then stays zero, so left
        # padding leaves the conv and SSM state of the real tokens untouched
        "use_bias": False,
        "tie_word_embeddings": params.tie_embeddings,
        "bos_token_id": ids[protocol.BOS],
        "eos_token_id": ids[protocol.EOS],
        "pad_token_id": ids[protocol.PAD],
    }


def mamba_config(params: ModelParams, ids: dict[str, int]) -> MambaConfig:
    """The config of a fresh Mamba; `ids`: the protocol's token ids and "vocab" (build.py)."""
    return MambaConfig(**ssm_fields(params, ids))


def parallel_scans(model: torch.nn.Module, enabled: bool = True) -> None:
    """Run every Mamba mixer of `model` on mamba.py's parallel scan (or, with `enabled` off,
    transformers' sequential loop); a model without Mamba mixers is left as it is."""
    for module in model.modules():
        if hasattr(module, "use_mambapy"):
            module.use_mambapy = enabled
