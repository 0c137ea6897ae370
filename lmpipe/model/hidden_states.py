"""Hidden states indexed the same way for every architecture: the layer numbers of distillation's
layer maps (lmpipe/distill/layers.py) and of the teacher cache's `hidden_layers`.

    layer 0        the input of block 1 (the token embedding, as that block reads it)
    layer i        the output of block i, for 1 <= i < L
    layer L        the output of block L after the final norm (what the LM head reads)

That is what transformers 5.25's `output_hidden_states` returns for Llama, Mamba-2 and
RecurrentGemma (hawk): L + 1 entries, entry 0 the input of block 1 (RecurrentGemma's embedding
already scaled by sqrt(d_model), Mamba-2's unscaled), the last tied to `last_hidden_state`, so
those are used unchanged. Mamba's
also has L + 1 entries but no embedding: entry i - 1 is the output of block i for every i, and
the extra last entry is the final norm's output. Mamba's is re-indexed here, its layer 0 being
its embedding lookup of the input ids (Mamba feeds the embedding to block 1 unscaled).

Layer L is after the final norm, not block L's raw output, because that is Llama's (and
RecurrentGemma's) `hidden_states[-1]`: the Llama path's numbers stay as they were.
`ATTENTION_FREE` names the model types that have no attention map to index at all.
"""

from __future__ import annotations

import torch

from lmpipe.core.archs import RECURRENT_TYPES

# model_type of lmpipe's architectures without attention, the recurrent ones
# (lmpipe/core/archs.py): no attention map for attention_kl
ATTENTION_FREE = RECURRENT_TYPES


def layer_states(model: torch.nn.Module, input_ids: torch.Tensor,
                  out) -> tuple[torch.Tensor, ...]:
    """`out.hidden_states` of `model`'s forward on `input_ids` (called with
    `output_hidden_states=True`) as L + 1 tensors in the order of the module docstring."""
    states = out.hidden_states
    if model.config.model_type != "mamba":  # mamba2's is already in this order
        return states
    embedded = model.get_input_embeddings()(input_ids)
    return (embedded, *states[:-2], states[-1])
