"""A KV cache for the generation loop (lmpipe/eval/decoders.py) whose keys and values live in a
buffer allocated once with room to spare, so that a decoding step writes its one new position in
place instead of copying the whole cache.

transformers' DynamicLayer concatenates every step: a step of a batch of 256 rows with a few
hundred cached positions copies (and, for a fresh allocation, page-faults) tens of MB per layer,
about half of a small model's decoding time on CPU. `BufferLayer` keeps DynamicLayer's contract
(its `keys`/`values` are the filled positions, (B, heads, filled, head_dim)) as views of a
buffer with spare positions, grown by half again when they run out. The views are strided along
the position axis; scaled_dot_product_attention reads them as they are.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer

SPARE = 64  # positions allocated beyond what a layer holds: a turn's decoding steps, most often


class BufferLayer(DynamicLayer):
    """DynamicLayer over a preallocated buffer (module docstring)."""

    def __init__(self, spare: int = SPARE) -> None:
        super().__init__()
        self.spare = spare
        self.filled = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, length, head_dim = key_states.shape
        # room for this first update (a prompt) and the spare positions after it
        self.allocate(batch, heads, head_dim, 0, key_states.dtype, key_states.device,
                      room=length + self.spare)

    def allocate(self, batch: int, heads: int, head_dim: int, filled: int, dtype: torch.dtype,
                 device: torch.device, room: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start with `filled` positions and `room` more (default: the layer's spare); returns
        the key and value buffers, (B, heads, capacity, head_dim). The first `filled` positions of every row are the
        caller's to write, padding included (zeros will do): a masked-out position is still
        read, and uninitialized memory could hold NaN, which no mask removes. Positions past
        `filled` are never read before `update` writes them."""
        shape = (batch, heads, filled + (self.spare if room is None else room), head_dim)
        self.adopt(torch.empty(shape, dtype=dtype, device=device),
                   torch.empty(shape, dtype=dtype, device=device), filled)
        return self._keys, self._values

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        """Use `keys`/`values` (B, heads, capacity, head_dim) as the buffers, their first
        `filled` positions written (as `allocate` says)."""
        self._keys, self._values = keys, values
        self.device, self.dtype, self.is_initialized = keys.device, keys.dtype, True
        self._view(filled)

    def _view(self, filled: int) -> None:
        self.filled = filled
        self.keys = self._keys[:, :, :filled]
        self.values = self._values[:, :, :filled]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if end > self._keys.shape[2]:
            self._grow(end + max(self.spare, end // 2))
        self._keys[:, :, self.filled:end] = key_states
        self._values[:, :, self.filled:end] = value_states
        self._view(end)
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:2], capacity, old.shape[3]))
            new[:, :, :self.filled] = old[:, :, :self.filled]
            setattr(self, name, new)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices` (a copy of their filled positions and the spare room)."""
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._view(self.filled)

    def reset(self) -> None:
        self.filled = 0
        self._keys = self._values = None
        super().reset()


class Workspace:
    """One flat buffer that successive batches carve their stacked KV buffers from.

    A batch's KV of a few tens of MB is past glibc's mmap threshold: allocated fresh, every page
    of it faults on its first write, which cost a prefix-cached batch on CPU more than copying
    its cached prefixes in (bench/prefix_cache.py). Reused, the pages are already there. A batch
    takes it only after the previous batch's decoder is done with it (the generation loop runs
    one batch at a time); it grows, with headroom, when a batch needs more."""

    HEADROOM = 1.5  # the next batch of a conversation is longer: grow past what this one needs

    def __init__(self) -> None:
        self.flat: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """An uninitialized tensor of `shape` (its contents: whatever an earlier batch left)."""
        size = math.prod(shape)
        flat = self.flat
        if flat is None or flat.numel() < size or flat.dtype != dtype or flat.device != device:
            self.flat = flat = torch.empty(int(size * self.HEADROOM), dtype=dtype, device=device)
        return flat[:size].view(shape)

    def release(self) -> None:
        """Free the buffer (the next `take` allocates anew)."""
        self.flat = None


def stacked_buffers(cache: Cache, batch: int, heads: int, head_dim: int, filled: int,
                    room: int, dtype: torch.dtype, device: torch.device,
                    workspace: Workspace | None = None) -> torch.Tensor:
    """One uninitialized buffer (L, 2, B, heads, filled + room, head_dim) behind every layer of
    `cache` (BufferLayers), taken from `workspace` when given: layer l's keys and values are
    views of [l, 0] and [l, 1], `filled` positions written by the caller (as
    `BufferLayer.allocate` says). A row's positions of every layer are then one slice,
    [:, :, row, :, a:b]: a cached prefix goes in with one copy per part, not one a layer
    (lmpipe/eval/prefix_decoder.py). A layer that grows or drops rows leaves the stack for
    buffers of its own."""
    shape = (len(cache.layers), 2, batch, heads, filled + room, head_dim)
    stack = (workspace.take(shape, dtype, device) if workspace is not None
             else torch.empty(shape, dtype=dtype, device=device))
    for layer, (keys, values) in zip(cache.layers, stack, strict=True):
        layer.adopt(keys, values, filled)
    return stack


def buffered_cache(layers: int | None = None, spare: int = SPARE) -> Cache:
    """An empty cache of BufferLayers: `layers` of them, or one a layer as the model updates it."""
    if layers is None:
        return Cache(layer_class_to_replicate=partial(BufferLayer, spare))
    return Cache(layers=[BufferLayer(spare) for _ in range(layers)])
