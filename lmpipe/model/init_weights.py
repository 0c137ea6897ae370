"""Weight initialization schemes for the Llama-style models of `lmpipe.model.build` (`model.init`).

`initialize_(model, scheme, seed)` re-draws every linear and embedding weight in place from its own
generator, so the result depends on `seed` alone (not on the global RNG or on what ran before).
Residual output projections are the layers whose output is added to the residual stream:
`self_attn.o_proj` and `mlp.down_proj`.

  hf           transformers' own init, left as built (normal(0, 0.02)); the seed is not used.
  gpt2_scaled  normal(0, 0.02); residual projections normal(0, 0.02 / sqrt(2 * n_layers))
               (GPT-2, nanoGPT).
  small        normal(0, sqrt(2 / (5 * d_model))) everywhere ("Transformers without Tears",
               Nguyen & Salazar 2019; Xavier-normal with fan_in = fan_out = d_model, 4*d_model).
  mitchell     OLMo's `InitFnType.mitchell`: normal(0, 1 / sqrt(fan_in)) truncated at +-3 std;
               residual projections further divided by sqrt(2 * (layer_idx + 1)); embeddings
               1 / sqrt(d_model), truncated like OLMo's `init_weights` does for every module.

Biases are zeroed and norm weights set to 1 for every scheme but `hf`. A tied output head is the
embedding matrix, initialized once as an embedding, and stays tied.

Only Llama takes the schemes other than `hf`: Mamba and RecurrentGemma keep their own
initialization (Mamba's dt bias and A_log, RecurrentGemma's zero-centred norms), which redrawing
every linear layer and setting norms to 1 would break.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

SCHEMES = ("hf", "gpt2_scaled", "small", "mitchell")
RESIDUAL_PROJECTIONS = ("o_proj", "down_proj")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer_index(name: str) -> int:
    match = _LAYER.search(name)
    if match is None:
        raise ValueError(f"initialize_: cannot find the layer index of residual projection {name!r}")
    return int(match.group(1))


@torch.no_grad()
def initialize_(model: nn.Module, scheme: str, seed: int) -> None:
    """Re-initialize `model`'s weights in place with `scheme` (one of SCHEMES), deterministically."""
    if scheme not in SCHEMES:
        raise ValueError(f"model.init: unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if scheme == "hf":
        return
    config = model.config
    if config.model_type != "llama":
        raise ValueError(f"model.init: {scheme!r} is a scheme for llama's layers; expected 'hf' "
                         f"for a {config.model_type} model (its own initialization)")
    n_layers, d_model = config.num_hidden_layers, config.hidden_size
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def draw(weight: torch.Tensor, std: float, truncate: bool) -> None:
        # Draw on CPU from the seeded generator, then copy: identical on every device.
        values = torch.empty(weight.shape, dtype=torch.float32)
        if truncate:
            nn.init.trunc_normal_(values, 0.0, std, -3 * std, 3 * std, generator=gen)
        else:
            nn.init.normal_(values, 0.0, std, generator=gen)
        weight.copy_(values)

    done: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if id(module.weight) in done:  # tied output head: already drawn as the embedding
                continue
            done.add(id(module.weight))
            is_embedding = isinstance(module, nn.Embedding)
            residual = not is_embedding and name.rsplit(".", 1)[-1] in RESIDUAL_PROJECTIONS
            if scheme == "gpt2_scaled":
                std = 0.02 / math.sqrt(2 * n_layers) if residual else 0.02
            elif scheme == "small":
                std = math.sqrt(2 / (5 * d_model))
            else:  # mitchell
                std = 1 / math.sqrt(d_model if is_embedding else module.in_features)
                if residual:
                    std /= math.sqrt(2 * (_layer_index(name) + 1))
            draw(module.weight, std, truncate=scheme == "mitchell")
        elif type(module).__name__.endswith("Norm") and isinstance(
                getattr(module, "weight", None), nn.Parameter):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
