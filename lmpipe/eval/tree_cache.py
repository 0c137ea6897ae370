"""What the two prefix caches of the generation loop share: a radix tree of token spans
(lmpipe/eval/prefix_tree.py) whose nodes hold pages in memory tiers with byte budgets
(lmpipe/eval/kv_tiers.py), least-recently-used pages paged down a tier or, from the last tier,
evicted, and the counters.

The attention cache (lmpipe/eval/prefix_cache.py) keeps the KV of every node's span: a node is
only useful with its ancestors, so a path pages out from its leaf up and only leaves are
evicted. The recurrent cache (lmpipe/eval/recurrent_prefix_cache.py) keeps a state snapshot at
some node ends and none elsewhere: a snapshot is useful alone, so pages go in plain
least-recently-used order, and any snapshot may be dropped. A subclass says which: how a payload
splits (`_split`), whether a node may page out yet (`_ready`), which node leaves the last tier
(`_victim`) and how (`_evict`). A node without a payload (`payload is None`, recurrent only)
lives in no tier.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import torch

from lmpipe.eval.kv_buffer import SPARE
from lmpipe.eval.kv_tiers import DEVICE, DISK, HOST, Tiers
from lmpipe.eval.prefix_tree import Node, RadixTree


class TreeCache:
    """A radix tree with a byte budget per tier (module docstring); subclasses add `prefill` and
    `insert_batch`, the two calls of the generation loop (lmpipe/eval/generate.py).

    `budgets` maps tier names ("device", "host", "disk") to bytes (None or absent: unbounded);
    `directory` adds the disk tier (the pages go to a fresh folder under it); `device_tier`
    forces the device tier on or off (default: on when the model is not on CPU).
    """

    def __init__(self, model: torch.nn.Module, budgets: dict[str, int | None] | None = None,
                 directory: str | Path | None = None, device_tier: bool | None = None) -> None:
        self.model = model
        device = next(model.parameters()).device
        on_device = device.type != "cpu" if device_tier is None else device_tier
        names = (DEVICE,) * on_device + (HOST,) + (DISK,) * (directory is not None)
        self.tiers = Tiers(names, budgets or {}, device, directory)
        self.tree = RadixTree(self._split)
        # the nodes of each tier: a budget check looks at its own tier's nodes only
        self.resident: dict[str, set[Node]] = {name: set() for name in names}
        self.lookups = self.hits = self.tokens_reused = self.tokens_computed = 0
        self.nodes_evicted = 0

    # -- what a subclass decides ----------------------------------------------------------------

    def prefill(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                spare: int = SPARE) -> tuple[Any, torch.Tensor]:
        """Prefill left-padded prompts (B, T) from their cached prefixes: (decoder, logits);
        `spare`: KV positions an attention decoder allocates for the steps after them."""
        raise NotImplementedError

    def insert_batch(self, decoder: Any, ids: torch.Tensor, mask: torch.Tensor,
                     generated: list[list[int]], decoder_rows: list[int] | None = None) -> None:
        """Store each row's fed tokens (prompt, then the generated tokens it was fed); row i is
        the decoder's row `decoder_rows[i]` (default: i)."""
        raise NotImplementedError

    def _split(self, payload: Any, k: int) -> tuple[Any, Any]:
        """The payloads of a node's first k tokens and of the rest (RadixTree's split)."""
        raise NotImplementedError

    def _ready(self, node: Node, tier: str) -> bool:
        """Whether `node` may page out of `tier` now (when some node of the tier is)."""
        return True

    def _victim(self, tier: str) -> Node:
        """The node to evict when the last tier, `tier`, is over its budget."""
        raise NotImplementedError

    def _evict(self, node: Node) -> None:
        raise NotImplementedError

    # -- bookkeeping ----------------------------------------------------------------------------

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
                    self._evict(self._victim(tier))
                    continue
                # with an order (`_ready`), a node inserted under a colder parent can leave none
                # ready: then any node goes. Least recently used first, readiness checked as
                # nodes come off the heap (the tier may hold many nodes; a lookup usually needs
                # a few moved)
                if not self._page_out_lru(tier, nodes, ready_only=True) and \
                        not self._page_out_lru(tier, nodes, ready_only=False):
                    break  # nothing of this tier's left to move (never with a consistent index)

    def _page_out_lru(self, tier: str, nodes: list[Node], ready_only: bool) -> int:
        """Page `tier`'s least-recently-used nodes down until it is within budget, only those
        `_ready` when `ready_only`; a paged-out node's parent becomes a candidate. Returns how
        many moved."""
        heap = [(n.last_used, n.id, n) for n in nodes]
        heapq.heapify(heap)
        moved = 0
        while heap and self.tiers.over(tier):
            node = heapq.heappop(heap)[2]
            if node.payload is None or node.payload.tier != tier or \
                    (ready_only and not self._ready(node, tier)):
                continue  # moved already (a parent pushed twice), dropped, or not ready
            self.tiers.page_out(node.payload)
            self._moved(node, tier)
            moved += 1
            parent = node.parent
            if parent is not None and parent.payload is not None and \
                    parent.payload.tier == tier and self._ready(parent, tier):
                heapq.heappush(heap, (parent.last_used, parent.id, parent))
        return moved

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
        self.tree = RadixTree(self._split)
        self.resident = {name: set() for name in self.tiers.names}
        self.tiers.clear()

    def close(self) -> None:
        """Drop every node and remove this cache's disk folder."""
        self.clear()
        self.tiers.close()
