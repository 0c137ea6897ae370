"""A memo of a layer's input transform for the last tensor it saw, shared by sibling layers.

A Llama block's q, k and v projections read one normed hidden state, and gate and up another, so
the per-token activation quantization of a quantized linear layer (QAT's fake quantization,
the packed ternary layer's int8 input) would run 7 times a block where 4 give the same values.
The memo is keyed on the tensor object itself (held, so its id cannot pass to a new tensor), its
in-place version counter, the transform's other arguments and grad mode; one per thread, for an
evaluation running beside training. Under torch.compile the graph is traced once and the
compiler removes repeated work itself, so the memo steps aside.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch


class LastInputMemo(threading.local):
    """`memo(x, *args)` is `compute(x, *args)`, reused while the same `x` comes in again."""

    def __init__(self, compute: Callable[..., Any]) -> None:
        self.compute = compute
        self.key: tuple | None = None
        self.value: Any = None

    def __call__(self, x: torch.Tensor, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.compute(x, *args)
        key = (x._version, args, torch.is_grad_enabled())
        if self.key is not None and self.key[0] is x and self.key[1:] == key:
            return self.value
        self.key, self.value = (x, *key), self.compute(x, *args)
        return self.value
