"""The Mamba-2 architecture (`model.arch: mamba2`): transformers' Mamba2Config from lmpipe's params.

Mamba-2 (Dao & Gu 2024, "state space duality") keeps Mamba's block (input projection to an inner
width `expand * d_model`, a causal depthwise convolution of width `d_conv`, a selective state
space, a gated output) but makes the state's decay a scalar per head of `head_dim` channels. That
turns the scan into matrix multiplies over chunks of `CHUNK_SIZE` tokens (transformers' torch path,
`mamba2_chunk_scan`): no (batch, length, inner, state) tensor is materialised, which is what makes
Mamba-1 ~10x slower than llama on CPU. It has no MLP and no positions.

Choices at lmpipe's sizes (d_model ~50-100, 2 layers, sequences of 128-256 tokens, CPU), measured
as one thread's CPU time for a training step (forward, backward, AdamW) at d_model 88 (~127k
parameters), batch 32, state 16, n_groups 1, on a shared 2-core machine:

    chunk_size (head_dim 16)   16      32      64      128
      128 tokens               282     279     391     473  ms
      256 tokens               571     618     765    1481  ms
      512 tokens              1100     979    1662          ms
    head_dim (chunk 32, 128 tokens)   8: 463   16: 279   22: 260   44: 224  ms

- chunk_size 32: the intra-chunk product grows with length x chunk and the inter-chunk pass with
  (length / chunk)^2, so at these lengths small chunks win; 16 and 32 tie at 128-256 tokens and
  32 is ~10% faster at 512. (transformers' default, 256, is for the CUDA kernels and costs ~2x
  here.) A constant, not a param: it changes how the scan is computed, not the function (up to
  float rounding), and a GPU run with mamba_ssm may set its own in config.json.
- head_dim 16 (`model.head_dim`): fewer, wider heads are a little faster, but each head is one
  decay rate; 16 keeps 6-12 heads (as many time scales) at widths 48-96, and 8 is much slower.
- n_groups 1: B and C shared by all heads (Mamba-2's multi-value attention analogue); more
  groups only pay off when sharding heads across devices.
- state_size = `d_state` (default 16, mamba's): the two state space models then compare at the
  same state per inner channel. Mamba-2's papers use 64-128 at widths in the thousands; the
  scan's cost grows with it (B, C and the chunk states are all state_size wide).
- no bias in the input and output projections (Mamba2Config's default, kept explicit): a
  left-padded position, zeroed by the attention mask before in_proj, then projects to zeros, so
  its conv window entries are zeros and its dt*B*x leaves the SSM state at zero: a padded
  prompt's state is an unpadded one's (lmpipe/eval/decoders.py relies on it).
- initialisation: transformers' own (normal(initializer_range) linears and embedding, S4D-real
  A, inverse-softplus dt bias), as for mamba; lmpipe's init schemes would overwrite A and dt.
"""

from __future__ import annotations

from transformers import Mamba2Config

from lmpipe.model.mamba import ssm_fields
from lmpipe.model.params import ModelParams

# tokens per chunk of the SSD scan on CPU (module docstring)
CHUNK_SIZE = 32
# B and C shared by every head (module docstring)
N_GROUPS = 1


def mamba2_config(params: ModelParams, ids: dict[str, int]) -> Mamba2Config:
    """The config of a fresh Mamba-2; `ids`: the protocol's token ids and "vocab" (build.py)."""
    inner = params.expand * params.d_model
    return Mamba2Config(
        **ssm_fields(params, ids),
        head_dim=params.head_dim,
        num_heads=inner // params.head_dim,  # params checked that head_dim divides it
        n_groups=N_GROUPS,
        chunk_size=CHUNK_SIZE,
    )
