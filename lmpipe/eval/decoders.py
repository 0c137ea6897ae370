"""Each architecture's inference cache for the lockstep loop of lmpipe/eval/generate.py: fill it
from a batch of left-padded prompts (`prefill`), then advance every row by one token a step
(`step`), returning the next-token logits of each row either way.

  attention (llama, and any model that returns `out.cache`): the prompts run left-padded, with an
      attention mask and positions counted from each prompt's first real token; each step grows
      the KV cache by one position, a finished row's pad masked out.
  mamba: left-padded too. transformers' Mamba multiplies its hidden states by the attention mask
      before the input projection and again before the scan, and lmpipe builds that projection
      without bias (lmpipe/model/mamba.py): a padded position feeds zeros to the convolution
      window and leaves the SSM state at zero, the state an unpadded prompt starts from. Steps
      pass no mask (Mamba's must be as long as the step, and transformers' generate passes none).
  mamba2: the same decoder as mamba. transformers' Mamba-2 zeroes padded positions before its
      input projection (no bias either, lmpipe/model/mamba2.py) and again after the convolution
      (`apply_mask_to_padding_states`), so a pad leaves zeros in the conv window and the SSM state
      at zero (its dt*B*x is zero; the decay of a zero state is zero); its cache is the same
      DynamicCache of linear-attention layers (conv window and SSM state per layer, updated in
      place by a one-token step). Only rounding differs from an unpadded prompt: the chunks of
      its scan start at other tokens.
  recurrent_gemma (hawk): its temporal conv1d does not mask padding (a pad's activations enter
      the first real tokens' windows; its RG-LRU does reset where position_ids == 0), so each
      group of equal-length prompts is prefilled unpadded and the fixed-size states (conv window
      and RG-LRU state of every layer) are stacked along the batch; the steps need no padding.
      RecurrentGemma keeps that state in its modules, not in a cache object (its output has no
      `cache`): the decoder sets and reads it there.

A finished row keeps being fed pad tokens: rows never mix, so that only changes its own state,
whose outputs the loop ignores. The recurrent decoders put a finished row's state back as it was
before the step, so at the end of a batch each row's state is the one after its last fed token:
the state snapshot the recurrent prefix cache stores (lmpipe/eval/recurrent_prefix_cache.py).
They read and write every row's fixed-size state (`states`, `set_states`); a step from given
states feeds one token a row, a row not `live` staying as it is (how the cache feeds suffixes of
different lengths from their snapshots: transformers' Mamba and RecurrentGemma run a chunk of
several tokens partly as if from a zero state, Mamba's scan and Hawk's convolution, so a chunk
cannot go on from a snapshot).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from lmpipe.core.archs import model_type
from lmpipe.eval.kv_buffer import SPARE, buffered_cache


class Decoder(Protocol):
    next_position: torch.Tensor  # (B,) the position of the token each row is fed next

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after each prompt; `ids`/`mask` (B, T) left-padded, mask 1 on tokens."""

    def step(self, tokens: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` (B,) and return the next logits (B, V); `live` (B,) bool: False for a
        finished row (fed a pad, its position not advanced)."""

    def can_drop_rows(self) -> bool:
        """Whether `keep_rows(rows)` may drop finished rows from the batch (else they are fed
        pads and ignored)."""


class AttentionDecoder:
    """Left padding, attention mask and explicit positions over the model's returned cache;
    `spare`: positions of KV room beyond the prompts (lmpipe/eval/kv_buffer.py)."""

    def __init__(self, model: torch.nn.Module, spare: int = SPARE) -> None:
        self.model = model
        self.spare = spare
        # A one-token step of a Llama under SDPA attends to every unpadded cached position, so its
        # 4D mask is the padding mask itself: passed prepared, transformers skips building it
        # again each step (a twentieth of a small model's decoding time on CPU).
        config = getattr(model, "config", None)
        self.step_mask_4d = (getattr(config, "model_type", None) == model_type("llama")
                             and getattr(config, "_attn_implementation", None) == "sdpa")

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.mask = mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         cache=self._new_cache(), use_cache=True,
                         logits_to_keep=1)
        self.past = out.cache
        self.next_position = positions[:, -1] + 1
        return out.logits[:, -1].float()

    def _new_cache(self) -> Cache:
        return buffered_cache(spare=self.spare)

    def can_drop_rows(self) -> bool:
        """Whether `keep_rows` works: the model's cache can select rows of the batch."""
        return hasattr(self.past, "batch_select_indices")

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Go on with only `rows` of the batch: the loop drops finished rows, which would
        otherwise cost every later step as much as a live one."""
        self.past.batch_select_indices(rows)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]

    def _step_mask(self) -> torch.Tensor | None:
        return self.mask[:, None, None, :].bool() if self.step_mask_4d else self.mask

    def step(self, tokens: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, live.long()[:, None]], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self._step_mask(),
                         position_ids=self.next_position[:, None], cache=self.past, use_cache=True)
        self.past = out.cache
        self.next_position = self.next_position + live.long()
        return out.logits[:, -1].float()


class MambaDecoder(AttentionDecoder):
    """Mamba and Mamba-2 mask padded positions themselves (module docstring); their steps take no
    mask. A row not live keeps its state (a pad would move it)."""

    def _new_cache(self) -> None:
        return None  # the model makes its own conv and SSM state cache

    def can_drop_rows(self) -> bool:
        return False  # a finished row is frozen, not dropped

    def _step_mask(self) -> torch.Tensor | None:
        return None

    def _state_tensors(self) -> list[torch.Tensor]:
        # the cache's own tensors: transformers updates them in place
        return [t for layer in self.past.layers for t in (layer.conv_states[0],
                                                          layer.recurrent_states[0])]

    def states(self) -> list[torch.Tensor]:
        """A copy of every row's state: each layer's conv window then SSM state, (B, ...) each."""
        return [t.clone() for t in self._state_tensors()]

    def set_states(self, states: list[torch.Tensor], next_position: torch.Tensor) -> None:
        """Go on from `states` (as `states` gives them, any batch size), each row's next token at
        `next_position` (B,)."""
        self.past = DynamicCache(config=self.model.config)
        for layer, conv, ssm in zip(self.past.layers, states[0::2], states[1::2], strict=True):
            layer.lazy_initialization(conv_states=conv, recurrent_states=ssm)
            layer.conv_states[0].copy_(conv)
            layer.recurrent_states[0].copy_(ssm)
            layer.has_previous_state[0] = True  # a state to go on from, not a prefill to come
        self.next_position = next_position.clone()
        self.mask = next_position.new_zeros((len(next_position), 0))  # the steps append to it

    def step(self, tokens: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        held = ~live
        kept = [t[held] for t in self._state_tensors()] if held.any() else None
        logits = super().step(tokens, live)
        if kept is not None:
            for t, before in zip(self._state_tensors(), kept):
                t[held] = before
        return logits


class RecurrentGemmaDecoder:
    """Hawk: unpadded prefill per prompt length, states stacked in the model's modules."""

    # A mask the model takes as already prepared (its convention for `generate`): building its
    # sliding-window mask fails when no block is attention (lmpipe/model/hawk.py).
    NO_MASK: ClassVar[dict[str, Any]] = {"sliding_attention": None}

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        # the temporal blocks, in layer order, wherever they sit in the module tree
        self.blocks = [m for m in model.modules() if hasattr(m, "rg_lru")]
        if len(self.blocks) != model.config.num_hidden_layers:
            raise ValueError("generate: this RecurrentGemma has attention blocks (Griffin); "
                             "lmpipe generates with recurrent blocks only (model.arch: hawk)")
        # never read by recurrent blocks; passing one keeps the model from resetting its state
        self.cache = DynamicCache(config=model.config)

    def _run(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=self.NO_MASK,
                         use_cache=True, cache=self.cache)
        return out.logits[:, -1].float()

    def _zero_states(self, batch: int, device: torch.device) -> list[list[torch.Tensor]]:
        return [[torch.zeros(batch, b.lru_width, b.conv1d_width - 1, device=device),
                 torch.zeros(batch, b.lru_width, device=device)] for b in self.blocks]

    def _set_states(self, states: list[list[torch.Tensor]]) -> None:
        for block, (conv, recurrent) in zip(self.blocks, states):
            block.conv1d_state, block.rg_lru.recurrent_states = conv, recurrent

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(-1)
        states = self._zero_states(len(ids), ids.device)
        logits = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            self._set_states(self._zero_states(len(rows), ids.device))
            positions = torch.arange(length, device=ids.device).expand(len(rows), -1)
            group = self._run(ids[rows, ids.shape[1] - length:], positions)
            if logits is None:
                logits = group.new_empty(len(ids), group.shape[-1])
            logits[rows] = group
            for (conv, recurrent), block in zip(states, self.blocks):
                conv[rows] = block.conv1d_state
                recurrent[rows] = block.rg_lru.recurrent_states
        self._set_states(states)
        self.next_position = lengths.clone()
        return logits

    def states(self) -> list[torch.Tensor]:
        """A copy of every row's state: each block's conv window then RG-LRU state, (B, ...)."""
        return [t.clone() for b in self.blocks for t in (b.conv1d_state, b.rg_lru.recurrent_states)]

    def set_states(self, states: list[torch.Tensor], next_position: torch.Tensor) -> None:
        """Go on from `states` (as `states` gives them, any batch size), each row's next token at
        `next_position` (B,)."""
        self._set_states([[conv.clone(), recurrent.clone()]
                          for conv, recurrent in zip(states[0::2], states[1::2], strict=True)])
        self.next_position = next_position.clone()

    def can_drop_rows(self) -> bool:
        return False  # a finished row is frozen, not dropped

    def step(self, tokens: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        held = ~live
        kept = [t[held] for b in self.blocks for t in (b.conv1d_state, b.rg_lru.recurrent_states)
                ] if held.any() else None
        logits = self._run(tokens[:, None], self.next_position[:, None])
        self.next_position = self.next_position + live.long()
        if kept is not None:  # a row not live keeps its state (a pad would move it)
            now = self.states()  # copies: the block's new state may view its step's outputs
            for t, before in zip(now, kept):
                t[held] = before
            self._set_states(list(zip(now[0::2], now[1::2])))
        return logits


# config.model_type (lmpipe/core/archs.py) -> its decoder; any other model is AttentionDecoder
DECODERS = {model_type("mamba"): MambaDecoder, model_type("mamba2"): MambaDecoder,
            model_type("hawk"): RecurrentGemmaDecoder}


def decoder_for(model: torch.nn.Module, spare: int = SPARE) -> Decoder:
    """The decoder of `model`'s architecture (by its config's model_type); `spare`: the KV
    positions an attention decoder allocates beyond the prompts, the steps it expects (more
    grow the buffer)."""
    kind = getattr(model.config, "model_type", None)
    if kind in DECODERS:
        return DECODERS[kind](model)
    if getattr(model, "_is_stateful", False):  # a recurrent cache this module does not know
        raise ValueError(f"generate: no decoder for the recurrent model type {kind!r}; expected "
                         f"llama or one of {', '.join(DECODERS)}")
    return AttentionDecoder(model, spare)
