"""A radix tree of token-id spans, the index of the prefix cache (lmpipe/eval/prefix_cache.py).

Each node below the root holds a span of token ids and a payload for exactly that span (the
model's KV for those positions, lmpipe/eval/kv_tiers.py); the spans on the path from the root to
a node spell the token sequence that ends there. Children are keyed by their span's first token,
so two children of a node never start alike. `match` returns the longest stored prefix of a
sequence (possibly ending inside a node), `insert` adds a sequence, splitting a node where the
sequence leaves it, as a radix tree does. A logical clock stamps the nodes a lookup or an insert
walks, for the least-recently-used policy of the cache: a node is only useful with its ancestors,
and walking a node walks them too, so an ancestor is never older than its descendants.

The tree is generic in its payload: the caller gives `split(payload, k) -> (head, tail)`, the
payload of the first k tokens and of the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import count
from typing import Any

Split = Callable[[Any, int], tuple[Any, Any]]


class Node:
    """One span of a stored sequence; `payload` covers exactly `tokens`."""

    __slots__ = ("children", "id", "last_used", "parent", "payload", "tokens")
    _ids = count()

    def __init__(self, tokens: tuple[int, ...], payload: Any, parent: Node | None) -> None:
        self.tokens = tokens
        self.payload = payload
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.last_used = 0
        self.id = next(Node._ids)  # stable name (a node's disk page is named after it)

    def __repr__(self) -> str:
        return f"Node({list(self.tokens)}, children={len(self.children)})"


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # most often the whole span: compared at C speed
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixTree:
    """Token spans with payloads; see the module docstring."""

    def __init__(self, split: Split) -> None:
        self.root = Node((), None, None)
        self._split = split
        self.clock = 0

    def match(self, tokens: Sequence[int]) -> tuple[list[tuple[Node, int]], int]:
        """The longest stored prefix of `tokens`: the nodes on its path, each with how many of
        its tokens the prefix uses (all of them but maybe the last node's), and its length.
        Stamps the path as used."""
        tokens = tuple(tokens)
        path: list[tuple[Node, int]] = []
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common(child.tokens, tokens[i:i + len(child.tokens)])
            path.append((child, k))
            i += k
            if k < len(child.tokens):
                break
            node = child
        self._touch(n for n, _ in path)
        return path, i

    def insert(self, tokens: Sequence[int], payload_from: Callable[[int], Any]) -> list[Node]:
        """Store `tokens`: the part already stored is shared, a node the sequence leaves midway
        is split there, and the rest becomes one new leaf whose payload is
        `payload_from(start)` (the payload of tokens[start:]; not called when nothing is new).
        Returns the path of nodes that spell `tokens`, stamped as used."""
        tokens = tuple(tokens)
        path: list[Node] = []
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = Node(tokens[i:], payload_from(i), node)
                node.children[tokens[i]] = leaf
                path.append(leaf)
                break
            k = _common(child.tokens, tokens[i:i + len(child.tokens)])
            if k < len(child.tokens):
                child = self.split(child, k)
            path.append(child)
            node, i = child, i + k
        self._touch(path)
        return path

    def split(self, node: Node, k: int) -> Node:
        """Cut `node` after its first k tokens: a new parent takes them (and their payload),
        `node` keeps the rest and its children. Returns the new parent."""
        assert 0 < k < len(node.tokens), (k, node)
        head_payload, tail_payload = self._split(node.payload, k)
        head = Node(node.tokens[:k], head_payload, node.parent)
        head.last_used = node.last_used
        node.parent.children[node.tokens[0]] = head
        node.tokens, node.payload, node.parent = node.tokens[k:], tail_payload, head
        head.children[node.tokens[0]] = node
        return head

    def remove_leaf(self, node: Node) -> None:
        """Drop a node that has no children (its payload is the caller's to free)."""
        assert not node.children and node.parent is not None, node
        del node.parent.children[node.tokens[0]]
        node.parent = None

    def nodes(self) -> Iterator[Node]:
        """Every node but the root, parents before children."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _touch(self, nodes) -> None:
        self.clock += 1
        for node in nodes:
            node.last_used = self.clock
