"""A prefix-tree cache of attention KV for the batched generation loop (lmpipe/eval/generate.py),
after SGLang's RadixAttention: a request reuses the longest prefix of its tokens any earlier
request computed, and the model runs only the rest.

The index is a radix tree of token spans (lmpipe/eval/prefix_tree.py); each node holds the KV of
its span, a page in one memory tier (lmpipe/eval/kv_tiers.py): the compute device when the model
is on an accelerator, host memory, and disk when the caller gives a directory. Every tier has a
byte budget; after each row's lookup and each row's insert, a tier over budget pages its
least-recently-used nodes down one tier (nodes whose children are all colder first, so a path
cools from its leaves up), and a hit pages a node's path back up to the top. A tier with no tier
below (host without a directory, or disk with a budget) evicts least-recently-used leaves
instead. Budgets hold between those calls (a tier holds at most its budget plus one row's
pages); the live batch cache, the working memory of the batch, is not counted.

In the loop (`generate(..., prefix_cache=...)`), each row's longest cached prefix (p_i tokens,
never the whole prompt: the last token is always computed, for its logits) is stacked into a
batch KV cache left-padded to max p_i, and only the suffixes run, left-padded too: a row reads
[pad | prefix_i | pad | suffix_i], the attention mask marks its real tokens and its positions go
on from p_i, exactly the positions (hence the RoPE'd keys) of the prompt computed whole
(lmpipe/eval/prefix_decoder.py). At the end
of a batch each row's real tokens (prompt and everything fed after it, tool turns included) go
into the tree with their KV, so the next turn of a conversation, whose prompt extends this one,
hits.

Attention models only: a recurrent model (mamba, mamba2, recurrent_gemma) has no per-token KV to cut at
any prefix, so this cache refuses it by name; lmpipe/eval/recurrent_prefix_cache.py caches its
state snapshots at node boundaries instead, on the same tree and tiers (lmpipe/eval/tree_cache.py),
and its `prefix_cache_for(model)` picks the cache a model needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lmpipe.core.archs import ARCHS
from lmpipe.eval.kv_buffer import SPARE, Workspace
from lmpipe.eval.kv_tiers import KVPage
from lmpipe.eval.padding import left_padded, real_tokens
from lmpipe.eval.prefix_decoder import PrefixDecoder
from lmpipe.eval.prefix_tree import Node
from lmpipe.eval.tree_cache import TreeCache

# model_type -> lmpipe arch of the recurrent architectures (lmpipe/core/archs.py)
RECURRENT = {arch.model_type: arch.name for arch in ARCHS.values() if arch.recurrent}


def supported(model: torch.nn.Module) -> bool:
    """Whether `model` keeps a per-token attention KV the cache can cut at any prefix (not a
    recurrent state)."""
    kind = getattr(model.config, "model_type", None)
    return kind not in RECURRENT and not getattr(model, "_is_stateful", False)


class PrefixCache(TreeCache):
    """Radix-tree KV cache with a byte budget per tier (module docstring; the budgets, tiers and
    counters are TreeCache's, lmpipe/eval/tree_cache.py).

    `budgets` maps tier names ("device", "host", "disk") to bytes (None or absent: unbounded);
    `directory` adds the disk tier (the pages go to a fresh folder under it); `device_tier`
    forces the device tier on or off (default: on when the model is not on CPU).
    """

    def __init__(self, model: torch.nn.Module, budgets: dict[str, int | None] | None = None,
                 directory: str | Path | None = None, device_tier: bool | None = None) -> None:
        if not supported(model):
            kind = getattr(model.config, "model_type", None)
            raise ValueError(f"prefix cache: model type {kind!r} (arch "
                             f"{RECURRENT.get(kind, kind)!r}) keeps a recurrent state, not an "
                             "attention KV cache; this cache supports attention models (llama) "
                             "only: use RecurrentPrefixCache, or prefix_cache_for(model) "
                             "(lmpipe/eval/recurrent_prefix_cache.py)")
        super().__init__(model, budgets, directory, device_tier)
        # the batches' KV buffer, reused from batch to batch (lmpipe/eval/kv_buffer.py)
        self.workspace = Workspace()

    def clear(self) -> None:
        super().clear()
        self.workspace.release()

    # -- the two calls of the generation loop ---------------------------------------------------

    def prefill(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                spare: int = SPARE) -> tuple[PrefixDecoder, torch.Tensor]:
        """Prefill left-padded prompts (B, T) from their cached prefixes: (decoder, logits);
        `spare`: KV positions for the steps after them (lmpipe/eval/kv_buffer.py)."""
        if model is not self.model:
            raise ValueError("prefix cache: built for another model; its KV would be wrong here")
        rows = real_tokens(ids, mask)
        prefixes = []
        for tokens in rows:
            prefixes.append(self.lookup(tokens))
            # the row's KV is copied out (or referenced) for the batch: its pages may go back
            # down at once, so a tier holds at most its budget and one row's prefix
            self.enforce_budgets()
        suffixes = [tokens[sum(part.shape[3] for part in parts):]
                    for tokens, parts in zip(rows, prefixes)]
        # the padding is masked out: any token id does
        suffix_ids, suffix_mask = left_padded(suffixes, 0)
        suffix_ids, suffix_mask = suffix_ids.to(ids.device), suffix_mask.to(ids.device)
        self.tokens_computed += sum(map(len, suffixes))
        decoder = PrefixDecoder(model, spare, self.workspace)
        logits = decoder.prefill_after(prefixes, suffix_ids, suffix_mask)
        return decoder, logits

    def insert_batch(self, decoder: PrefixDecoder, ids: torch.Tensor, mask: torch.Tensor,
                     generated: list[list[int]], decoder_rows: list[int] | None = None) -> None:
        """Store each row's fed tokens (its prompt, then the generated tokens the model was fed:
        all but a finished row's last) with their KV from the decoder's cache, where row i is
        the decoder's row `decoder_rows[i]` (default: i)."""
        fed = decoder.mask.sum(1).tolist()  # each decoder row's real tokens
        for i, prompt in enumerate(real_tokens(ids, mask)):
            row = i if decoder_rows is None else decoder_rows[i]
            tokens = prompt + list(generated[i])
            stop = min(fed[row], len(tokens))
            self.insert(tokens[:stop], lambda start, row=row, stop=stop:
                        decoder.row_kv(row, start, stop))
            self.enforce_budgets()

    # -- the tree -------------------------------------------------------------------------------

    def lookup(self, tokens: list[int]) -> list[torch.Tensor]:
        """The KV on the compute device of the longest cached prefix of `tokens` short of its last
        token, as the consecutive parts its nodes hold (each (L, 2, heads, n, head_dim); none
        for a miss); pages the prefix's nodes up to the top tier."""
        path, length = self.tree.match(tokens[:-1])
        self.lookups += 1
        if not length:
            return []
        self.hits += 1
        self.tokens_reused += length
        parts = []
        for node, used in path:
            tier = node.payload.tier
            kv = self.tiers.read(node.payload).to(self.tiers.compute_device)
            parts.append(kv[:, :, :, :used])
            self._moved(node, tier)
        return parts

    def insert(self, tokens: list[int], kv_from: Callable[[int], torch.Tensor]) -> list[Node]:
        """Store `tokens`; `kv_from(start)` gives the KV of tokens[start:] when some are new."""
        path = self.tree.insert(tokens, lambda start: self.tiers.add(kv_from(start)))
        for node in path:  # the new leaf, and the new parent of a split, join their tier
            self.resident[node.payload.tier].add(node)
        return path

    # -- the order of page-outs and evictions (lmpipe/eval/tree_cache.py) ----------------------

    def _split(self, payload: KVPage, k: int) -> tuple[KVPage, KVPage]:
        return self.tiers.split(payload, k)

    def _ready(self, node: Node, tier: str) -> bool:
        # a node moves only after its children (a path cools from its leaf up)
        return self._colder_below(node, tier)

    def _victim(self, tier: str) -> Node:
        # only a leaf can go: its descendants would lose the KV of their prefix
        leaves = [n for n in self.resident[tier] if not n.children] or \
            [n for n in self.tree.nodes() if not n.children]
        return min(leaves, key=lambda n: n.last_used)

    def _colder_below(self, node: Node, tier: str) -> bool:
        rank = self.tiers.names.index
        return all(rank(c.payload.tier) > rank(tier) for c in node.children.values())

    def _evict(self, node: Node) -> None:
        self.resident[node.payload.tier].discard(node)
        self.tiers.drop(node.payload)
        self.tree.remove_leaf(node)
        self.nodes_evicted += 1
