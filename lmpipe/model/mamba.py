"""The Mamba architecture (`model.arch: mamba`): transformers' MambaConfig from lmpipe's params.

Mamba (Gu & Dao 2023) replaces attention with a selective state space: each block projects to
an inner width `expand * d_model`, runs a causal depthwise convolution of width `d_conv`, then a
recurrence with a state of `d_state` per inner channel. It has no MLP and no positions. On CPU
its multi-token scans (training, prefill) run mamba.py's parallel scan (`use_mambapy`).
"""

from __future__ import annotations

from transformers import MambaConfig

from lmpipe.core import protocol
from lmpipe.model.params import ModelParams


def mamba_config(params: ModelParams, ids: dict[str, int]) -> MambaConfig:
    """The config of a fresh Mamba; `ids`: the protocol's token ids and "vocab" (build.py)."""
    return MambaConfig(
        vocab_size=ids["vocab"],
        hidden_size=params.d_model,
        num_hidden_layers=params.n_layers,
        state_size=params.d_state,
        expand=params.expand,
        conv_kernel=params.d_conv,
        # no bias in the input projection: a padded position's zeroed input then stays zero, so
        # left padding leaves the conv and SSM state of the real tokens untouched
        use_bias=False,
        # without mamba_ssm's CUDA kernels transformers scans a sequence one position at a time;
        # with mamba.py installed (the mambapy package, a dependency) it runs mamba.py's
        # parallel scan instead: ~4x faster training on CPU (bench/archs.py), the same model
        use_mambapy=True,
        tie_word_embeddings=params.tie_embeddings,
        bos_token_id=ids[protocol.BOS],
        eos_token_id=ids[protocol.EOS],
        pad_token_id=ids[protocol.PAD],
    )
