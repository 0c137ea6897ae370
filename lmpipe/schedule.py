"""Learning-rate schedule as a pure function of the step: nothing stateful to save or restore."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float) -> float:
    """Linear warmup to `base_lr`, then cosine decay to `min_lr_ratio * base_lr` at `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
