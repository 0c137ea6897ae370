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

Attention models only: a recurrent model (mamba, recurrent_gemma) has no per-token KV to cut at
any prefix; caching its state snapshots at node boundaries is a later step, and the cache refuses
those models by name.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from pathlib import Path

import torch

from lmpipe.eval.kv_tiers import DEVICE, DISK, HOST, Tiers
from lmpipe.eval.prefix_decoder import PrefixDecoder
from lmpipe.eval.prefix_tree import Node, RadixTree

RECURRENT = {"mamba": "mamba", "recurrent_gemma": "hawk"}  # model_type -> lmpipe arch


def supported(model: torch.nn.Module) -> bool:
    """Whether `model` keeps a per-token attention KV the cache can cut at any prefix (not a
    recurrent state)."""
    kind = getattr(model.config, "model_type", None)
    return kind not in RECURRENT and not getattr(model, "_is_stateful", False)


class PrefixCache:
    """Radix-tree KV cache with a byte budget per tier (module docstring).

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
                             "attention KV cache; the prefix cache supports attention models "
                             "(llama) only")
        self.model = model
        device = next(model.parameters()).device
        on_device = device.type != "cpu" if device_tier is None else device_tier
        names = (DEVICE,) * on_device + (HOST,) + (DISK,) * (directory is not None)
        self.tiers = Tiers(names, budgets or {}, device, directory)
        self.tree = RadixTree(self.tiers.split)
        # the nodes of each tier: a budget check looks at its own tier's nodes only
        self.resident: dict[str, set[Node]] = {name: set() for name in names}
        self.lookups = self.hits = self.tokens_reused = self.tokens_computed = 0
        self.nodes_evicted = 0

    # -- the two calls of the generation loop ---------------------------------------------------

    def prefill(self, model: torch.nn.Module, ids: torch.Tensor,
                mask: torch.Tensor) -> tuple[PrefixDecoder, torch.Tensor]:
        """Prefill left-padded prompts (B, T) from their cached prefixes: (decoder, logits)."""
        if model is not self.model:
            raise ValueError("prefix cache: built for another model; its KV would be wrong here")
        rows = [ids[row][mask[row].bool()].tolist() for row in range(len(ids))]
        prefixes = []
        for tokens in rows:
            prefixes.append(self.lookup(tokens))
            # the row's KV is copied out (or referenced) for the batch: its pages may go back
            # down at once, so a tier holds at most its budget and one row's prefix
            self.enforce_budgets()
        suffixes = [tokens[0 if kv is None else kv.shape[3]:] for tokens, kv in zip(rows, prefixes)]
        width = max(map(len, suffixes))
        # the padding is masked out: any token id does
        suffix_ids = torch.zeros((len(rows), width), dtype=torch.long, device=ids.device)
        suffix_mask = torch.zeros((len(rows), width), dtype=torch.long, device=ids.device)
        for row, tokens in enumerate(suffixes):
            suffix_ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            suffix_mask[row, width - len(tokens):] = 1
        self.tokens_computed += sum(map(len, suffixes))
        decoder = PrefixDecoder(model)
        logits = decoder.prefill_after(prefixes, suffix_ids, suffix_mask)
        return decoder, logits

    def insert_batch(self, decoder: PrefixDecoder, ids: torch.Tensor, mask: torch.Tensor,
                     generated: list[list[int]]) -> None:
        """Store each row's fed tokens (its prompt, then the generated tokens the model was fed:
        all but a finished row's last) with their KV from the decoder's cache."""
        for row in range(len(ids)):
            tokens = ids[row][mask[row].bool()].tolist() + list(generated[row])
            stop = min(int(decoder.mask[row].sum()), len(tokens))
            self.insert(tokens[:stop], lambda start, row=row, stop=stop:
                        decoder.row_kv(row, start, stop))
            self.enforce_budgets()

    # -- the tree -------------------------------------------------------------------------------

    def lookup(self, tokens: list[int]) -> torch.Tensor | None:
        """The KV (L, 2, heads, p, head_dim) on the compute device of the longest cached prefix of
        `tokens` short of its last token, or None; pages the prefix's nodes up to the top tier."""
        path, length = self.tree.match(tokens[:-1])
        self.lookups += 1
        if not length:
            return None
        self.hits += 1
        self.tokens_reused += length
        parts = []
        for node, used in path:
            tier = node.payload.tier
            kv = self.tiers.read(node.payload).to(self.tiers.compute_device)
            parts.append(kv[:, :, :, :used])
            self._moved(node, tier)
        return torch.cat(parts, dim=3) if len(parts) > 1 else parts[0]

    def insert(self, tokens: list[int], kv_from: Callable[[int], torch.Tensor]) -> list[Node]:
        """Store `tokens`; `kv_from(start)` gives the KV of tokens[start:] when some are new."""
        path = self.tree.insert(tokens, lambda start: self.tiers.add(kv_from(start)))
        for node in path:  # the new leaf, and the new parent of a split, join their tier
            self.resident[node.payload.tier].add(node)
        return path

    def _moved(self, node: Node, tier: str) -> None:
        """Keep `resident` in step after `node` left `tier`."""
        if node.payload.tier != tier:
            self.resident[tier].discard(node)
            self.resident[node.payload.tier].add(node)

    # -- budgets --------------------------------------------------------------------------------

    def enforce_budgets(self) -> None:
        """Page least-recently-used nodes down (or evict them from the last tier) until every
        tier is within its budget, fastest tier first."""
        for tier in self.tiers.names:
            while self.tiers.over(tier):
                nodes = list(self.resident[tier])
                if tier == DISK:
                    copies = [n for t in self.tiers.names if t != DISK for n in self.resident[t]
                              if n.payload.offset is not None]
                    if copies:  # clean copies of pages in memory go first
                        self.tiers.forget_file(min(copies, key=lambda n: n.last_used).payload)
                        continue
                if self.tiers.next_tier(tier) is None:
                    leaves = [n for n in nodes if not n.children] or \
                        [n for n in self.tree.nodes() if not n.children]
                    self._evict(min(leaves, key=lambda n: n.last_used))
                    continue
                # a node moves only after its children (a path cools from its leaf up); a node
                # inserted under a colder parent can leave none ready: then any node goes.
                # Least recently used first, readiness checked as nodes come off the heap (the
                # tier may hold many nodes; a lookup usually needs a few moved)
                if not self._page_out_lru(tier, nodes, ready_only=True) and \
                        not self._page_out_lru(tier, nodes, ready_only=False):
                    break  # nothing of this tier's left to move (never with a consistent index)

    def _page_out_lru(self, tier: str, nodes: list[Node], ready_only: bool) -> int:
        """Page `tier`'s least-recently-used nodes down until it is within budget, only those
        whose children are all colder when `ready_only`; a paged-out node's parent becomes a
        candidate. Returns how many moved."""
        heap = [(n.last_used, n.id, n) for n in nodes]
        heapq.heapify(heap)
        moved = 0
        while heap and self.tiers.over(tier):
            node = heapq.heappop(heap)[2]
            if node.payload.tier != tier or (ready_only and not self._colder_below(node, tier)):
                continue  # moved already (a parent pushed twice), or its children are warmer
            self.tiers.page_out(node.payload)
            self._moved(node, tier)
            moved += 1
            parent = node.parent
            if parent.payload is not None and parent.payload.tier == tier and \
                    self._colder_below(parent, tier):
                heapq.heappush(heap, (parent.last_used, parent.id, parent))
        return moved

    def _colder_below(self, node: Node, tier: str) -> bool:
        rank = self.tiers.names.index
        return all(rank(c.payload.tier) > rank(tier) for c in node.children.values())

    def _evict(self, node: Node) -> None:
        self.resident[node.payload.tier].discard(node)
        self.tiers.drop(node.payload)
        self.tree.remove_leaf(node)
        self.nodes_evicted += 1

    # -- reporting ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters: lookups (one a prompt), hits (prompts that reused a prefix), prefill tokens
        reused and computed, nodes and tokens held, bytes held (now, and at most: that one counts
        the moments mid-prefill when a batch's hits are resident at once), paged out and paged in
        per tier, bytes written to disk, budgets, nodes evicted."""
        nodes = list(self.tree.nodes())
        return {
            "lookups": self.lookups, "hits": self.hits,
            "tokens_reused": self.tokens_reused, "tokens_computed": self.tokens_computed,
            "nodes": len(nodes), "tokens": sum(len(n.tokens) for n in nodes),
            "bytes": dict(self.tiers.used), "peak_bytes": dict(self.tiers.peak),
            "budgets": dict(self.tiers.budgets),
            "paged_out_bytes": dict(self.tiers.paged_out),
            "paged_in_bytes": dict(self.tiers.paged_in), "disk_written_bytes": self.tiers.written,
            "nodes_evicted": self.nodes_evicted,
        }

    def clear(self) -> None:
        """Drop every node (their disk pages too); the cache stays usable."""
        self.tree = RadixTree(self.tiers.split)
        self.resident = {name: set() for name in self.tiers.names}
        self.tiers.clear()

    def close(self) -> None:
        """Drop every node and remove this cache's disk folder."""
        self.clear()
        self.tiers.close()
