"""Keep Python's cyclic garbage collector off the objects that were alive before a long batched
loop (generation, lmpipe/eval/generate.py).

A full collection walks every tracked object: after torch, transformers and a model are loaded
that is some 400,000 of them, about 0.1 s a walk on this project's CPUs, and a loop that keeps
what it makes (a prefix cache's tree, the generations) triggers several. Inside `frozen_heap()`
the objects from before are in the collector's permanent generation (`gc.freeze`): collections
walk only what the loop makes. They go back to the oldest generation afterwards (`gc.unfreeze`),
so nothing is kept from collection for good; a caller that froze the heap itself keeps its
freeze. Measured on the conversation eval of bench/prefix_cache.py (see bench/README.md).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Collections inside walk only objects made inside (module docstring)."""
    if gc.get_freeze_count():  # the caller manages the freeze
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
