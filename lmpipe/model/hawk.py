"""The Hawk architecture (`model.arch: hawk`): transformers' RecurrentGemmaConfig with recurrent
blocks only.

Hawk (De et al. 2024, "Griffin") is a gated linear RNN: each block runs a causal depthwise
convolution of width `d_conv` and the RG-LRU recurrence (width `lru_width`, its gates
block-diagonal in `lru_blocks` blocks) beside a GeLU branch, followed by a gated MLP. Griffin
interleaves local attention; Hawk has none (`block_types=["recurrent"]`).

transformers 5.24's RecurrentGemma fails in any forward with `use_cache=True` when no block is
attention (its sliding-window mask asks the cache for a sequence length that recurrent layers do
not keep), so the saved config and generation config say `use_cache: false`: a plain forward,
`generate` and lm-eval then run (uncached). lmpipe's own generation loop drives the recurrent
state itself (lmpipe/eval/decoders.py).
"""

from __future__ import annotations

from transformers import RecurrentGemmaConfig

from lmpipe.core import protocol
from lmpipe.model.params import ModelParams


def hawk_config(params: ModelParams, ids: dict[str, int]) -> RecurrentGemmaConfig:
    """The config of a fresh Hawk; `ids`: the protocol's token ids and "vocab" (build.py)."""
    return RecurrentGemmaConfig(
        vocab_size=ids["vocab"],
        hidden_size=params.d_model,
        # RecurrentGemma's MLP is intermediate_size // 2 wide
        intermediate_size=2 * params.mlp_width,
        num_hidden_layers=params.n_layers,
        num_attention_heads=params.lru_blocks,
        lru_width=params.hawk_lru_width,
        conv1d_width=params.d_conv,
        block_types=["recurrent"],
        use_cache=False,
        tie_word_embeddings=params.tie_embeddings,
        bos_token_id=ids[protocol.BOS],
        eos_token_id=ids[protocol.EOS],
        pad_token_id=ids[protocol.PAD],
    )
