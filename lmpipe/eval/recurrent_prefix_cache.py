"""A prefix-tree cache of recurrent state snapshots for the batched generation loop
(lmpipe/eval/generate.py), for the models whose cache is a fixed-size state, not a per-token KV:
Mamba, Mamba-2 and Hawk (recurrent_gemma). After SGLang's Mamba radix cache: a state cannot be cut at an
arbitrary token, so only the node ends that carry a snapshot are reusable.

The index is the radix tree of the attention cache (lmpipe/eval/prefix_tree.py), its memory the
same tiers and byte budgets (lmpipe/eval/tree_cache.py, lmpipe/eval/kv_tiers.py). A node carries
a snapshot, the state of every layer after the node's last token, only where a stored sequence
ended (a prompt, after its prefill, and a prompt with the tokens fed after it, at the end of its
batch); a node split off above one (where a later sequence left it) has none. A prompt reuses the
deepest node of its matched path that it matches whole, that has a snapshot, and that ends
before its last token (computed always, for its logits); nothing else of the path is usable.

In the loop, the rows without a hit are prefilled as without the cache (the architecture's
decoder, lmpipe/eval/decoders.py, on that sub-batch); the rows with a hit start from their
snapshot; then one decoder of the whole batch feeds the hits' suffixes a token a step, each
suffix left-padded to the longest so that every row ends on its last prompt token, a row frozen
(its state kept) while it is padding and all along for the prefilled rows. transformers runs a
chunk of tokens partly as if from a zero state, so a suffix cannot go in one call; its tokens
count in `tokens_computed`, but each step runs the whole batch. (Mamba-2's scan does start a chunk from
the cache's state, but the suffixes of a batch differ in length, and the pads in front of a
shorter one would decay its snapshot: a masked position still has dt > 0. It goes a token a step
like the others.) At the end of a batch each row's
fed tokens (prompt, then the generated tokens it was fed) go into the tree with its final state
(a finished row's is frozen at its last fed token) as the snapshot of that sequence's end: the
next turn of a conversation, whose prompt extends it, starts there.

A snapshot is one page of raw bytes (every layer's state tensors, flattened): it pages out to
host and disk and back as a KV page does. Unlike a KV page it is useful without its ancestors,
so pages go in plain least-recently-used order, and the last tier drops the least recently used
snapshot wherever it is, pruning the branch below it that no snapshot ends any more.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmpipe.eval.decoders import decoder_for
from lmpipe.eval.kv_buffer import SPARE
from lmpipe.eval.kv_tiers import KVPage
from lmpipe.eval.padding import real_tokens
from lmpipe.eval.prefix_cache import RECURRENT, PrefixCache, supported
from lmpipe.eval.prefix_tree import Node
from lmpipe.eval.tree_cache import TreeCache

Layout = list[tuple[tuple[int, ...], torch.dtype]]  # each state tensor's shape (one row), dtype


class StatePage(KVPage):
    """One row's state snapshot as a flat uint8 tensor (`pack`), in one tier."""

    __slots__ = ()

    def __init__(self, data: torch.Tensor, tier: str) -> None:
        self.kv: torch.Tensor | None = data
        self.offset: int | None = None
        self.tier = tier
        self.shape, self.dtype = tuple(data.shape), data.dtype
        self.length = 0  # no tokens: the state after them
        self.nbytes = data.numel()


def layout_of(states: list[torch.Tensor]) -> Layout:
    return [(tuple(t.shape[1:]), t.dtype) for t in states]


def pack(states: list[torch.Tensor]) -> torch.Tensor:
    """Every row's states as bytes, (B, bytes a row): a row's snapshot is one page."""
    batch = len(states[0])
    return torch.cat([t.reshape(batch, -1).contiguous().view(torch.uint8) for t in states], dim=1)


def unpack(data: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """The state tensors (B, ...) of rows packed by `pack`, (B, bytes a row)."""
    out, start = [], 0
    for shape, dtype in layout:
        size = torch.Size(shape).numel() * dtype.itemsize
        part = data[:, start:start + size].contiguous().view(dtype)
        out.append(part.view(len(data), *shape))
        start += size
    return out


class RecurrentPrefixCache(TreeCache):
    """Radix tree of recurrent state snapshots with a byte budget per tier (module docstring);
    the arguments are PrefixCache's."""

    def __init__(self, model: torch.nn.Module, budgets: dict[str, int | None] | None = None,
                 directory: str | Path | None = None, device_tier: bool | None = None) -> None:
        kind = getattr(model.config, "model_type", None)
        if kind not in RECURRENT:
            raise ValueError(f"recurrent prefix cache: no state snapshots of model type {kind!r};"
                             f" expected one of {sorted(RECURRENT)} (an attention model: "
                             "PrefixCache, or prefix_cache_for(model))")
        decoder_for(model)  # refuses what the loop cannot decode (e.g. Griffin's attention)
        super().__init__(model, budgets, directory, device_tier)
        self.layout: Layout | None = None  # known from the first states the cache sees

    # -- the two calls of the generation loop ---------------------------------------------------

    def prefill(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                spare: int = SPARE) -> tuple[object, torch.Tensor]:
        """Prefill left-padded prompts (B, T) from their cached snapshots: (decoder, logits);
        `spare` is for attention decoders: a state has no positions to make room for."""
        if model is not self.model:
            raise ValueError("prefix cache: built for another model; its states would be wrong "
                             "here")
        rows = real_tokens(ids, mask)
        starts, snapshots = [], []
        for tokens in rows:
            start, snapshot = self.lookup(tokens)
            starts.append(start)
            snapshots.append(snapshot)
            self.enforce_budgets()  # the snapshot is copied out: its page may go back down
        self.tokens_computed += sum(len(t) - s for t, s in zip(rows, starts))
        decoder = decoder_for(model)
        misses = [row for row, start in enumerate(starts) if not start]
        if len(misses) == len(rows):
            logits = decoder.prefill(ids, mask)
        else:
            prefilled = None
            if misses:  # prefilled as without the cache, only as wide as their longest prompt
                width = max(len(rows[row]) for row in misses)
                logits_misses = decoder.prefill(ids[misses, -width:], mask[misses, -width:])
                prefilled = decoder.states()
                self.layout = layout_of(prefilled)
            self._start(decoder, rows, starts, snapshots, prefilled)
            logits = self._feed_suffixes(decoder, rows, starts)
            if misses:
                logits[misses] = logits_misses
        self._snapshot_prompts(decoder, rows)
        return decoder, logits

    def _snapshot_prompts(self, decoder, rows: list[list[int]]) -> None:
        """Store each prompt with the state after it. The next turn's prompt is text: when the
        generated tokens do not come back from it token for token (an untrained model's stray
        byte decodes to U+FFFD and re-encodes as three), the match leaves the stored sequence
        inside its generated part, where no state is; the prompt's end is still a node end with
        one (an attention cache can cut at any token and needs no such point)."""
        states = decoder.states()
        self.layout = layout_of(states)
        packed = pack(states)
        for row, tokens in enumerate(rows):
            self.insert(tokens, packed[row])
            self.enforce_budgets()

    def _start(self, decoder, rows: list[list[int]], starts: list[int],
               snapshots: list[torch.Tensor | None], prefilled: list[torch.Tensor] | None) -> None:
        """Set the batch's states: a hit's snapshot, else the prefilled rows' states in order."""
        hits = [row for row, start in enumerate(starts) if start]
        misses = [row for row, start in enumerate(starts) if not start]
        device = self.tiers.compute_device
        cached = unpack(torch.stack([snapshots[row] for row in hits]).to(device), self.layout)
        states = []
        for i, part in enumerate(cached):
            whole = part.new_empty((len(rows), *part.shape[1:]))
            whole[hits] = part
            if misses:
                whole[misses] = prefilled[i]
            states.append(whole)
        positions = [start or len(tokens) for start, tokens in zip(starts, rows)]
        decoder.set_states(states, torch.tensor(positions, device=device))

    def _feed_suffixes(self, decoder, rows: list[list[int]], starts: list[int]) -> torch.Tensor:
        """Feed each hit the rest of its prompt a token a step, left-padded so that every hit
        ends on its prompt's last token (a row frozen while padding, and all along for a miss);
        the logits (B, V) after each hit's prompt (a miss's row: anything)."""
        hits = [row for row, start in enumerate(starts) if start]
        device = self.tiers.compute_device
        width = max(len(rows[row]) - starts[row] for row in hits)
        feed = torch.zeros((len(rows), width), dtype=torch.long, device=device)  # a pad: any id
        live = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
        for row in hits:
            suffix = rows[row][starts[row]:]
            feed[row, width - len(suffix):] = torch.tensor(suffix, device=device)
            live[row, width - len(suffix):] = True
        logits = None
        for t in range(width):
            step = decoder.step(feed[:, t], live[:, t])
            logits = step if logits is None else torch.where(live[:, t, None], step, logits)
        return logits

    def insert_batch(self, decoder, ids: torch.Tensor, mask: torch.Tensor,
                     generated: list[list[int]], decoder_rows: list[int] | None = None) -> None:
        """Store each row's fed tokens (its prompt, then the generated tokens the model was fed:
        all but a finished row's last) with the row's state after them, the decoder's now; row i
        is the decoder's row `decoder_rows[i]` (default: i)."""
        states = decoder.states()
        self.layout = layout_of(states)
        packed = pack(states)
        for i, prompt in enumerate(real_tokens(ids, mask)):
            row = i if decoder_rows is None else decoder_rows[i]
            tokens = prompt + list(generated[i])
            stop = min(int(decoder.next_position[row]), len(tokens))  # the tokens it was fed
            self.insert(tokens[:stop], packed[row])
            self.enforce_budgets()

    # -- the tree -------------------------------------------------------------------------------

    def lookup(self, tokens: list[int]) -> tuple[int, torch.Tensor | None]:
        """(length, snapshot bytes on the compute device) of the deepest snapshot on the path of
        `tokens` short of its last token (module docstring), or (0, None); pages it to the top
        tier."""
        path, _ = self.tree.match(tokens[:-1])
        self.lookups += 1
        end = length = 0
        best = None
        for node, used in path:
            if used < len(node.tokens):
                break  # the prompt leaves this node midway: its end's state is not the prompt's
            end += used
            if node.payload is not None:
                best, length = node, end
        if best is None:
            return 0, None
        self.hits += 1
        self.tokens_reused += length
        tier = best.payload.tier
        data = self.tiers.read(best.payload).to(self.tiers.compute_device)
        self._moved(best, tier)
        return length, data

    def insert(self, tokens: list[int], snapshot: torch.Tensor) -> list[Node]:
        """Store `tokens` with `snapshot` (bytes, as `pack` gives a row) at their end; an end
        that already has one keeps it (the same state: the same tokens from a zero state)."""
        def page(_start: int | None = None) -> StatePage:
            return self.tiers.add(snapshot.clone(), StatePage)  # not a view of the batch's

        path = self.tree.insert(tokens, page)
        if path and path[-1].payload is None:  # the sequence ends where a split left no state
            path[-1].payload = page()
        if path:
            self.resident[path[-1].payload.tier].add(path[-1])
        return path

    # -- the order of page-outs and evictions (lmpipe/eval/tree_cache.py) ----------------------

    def _split(self, payload: StatePage | None, k: int) -> tuple[None, StatePage | None]:
        # the head ends where no sequence ended: no state; the tail ends where the node did
        return None, payload

    def _victim(self, tier: str) -> Node:
        return min(self.resident[tier], key=lambda n: (n.last_used, n.id))

    def _evict(self, node: Node) -> None:
        self.resident[node.payload.tier].discard(node)
        self.tiers.drop(node.payload)
        node.payload = None
        self.nodes_evicted += 1
        # a leaf without a snapshot leads to none any more: prune it, and so on up
        while node.parent is not None and not node.children and node.payload is None:
            parent = node.parent
            self.tree.remove_leaf(node)
            node = parent

    def stats(self) -> dict:
        """TreeCache's counters, and `snapshots`: the nodes that carry one (nodes_evicted
        counts the snapshots dropped)."""
        return {**super().stats(),
                "snapshots": sum(n.payload is not None for n in self.tree.nodes())}


def prefix_cache_for(model: torch.nn.Module, budgets: dict[str, int | None] | None = None,
                     directory: str | Path | None = None,
                     device_tier: bool | None = None) -> PrefixCache | RecurrentPrefixCache:
    """The prefix cache `model` needs: of attention KV (PrefixCache) or of recurrent state
    snapshots (RecurrentPrefixCache, Mamba, Mamba-2 and Hawk)."""
    kind = RecurrentPrefixCache if not supported(model) else PrefixCache
    return kind(model, budgets, directory, device_tier)
