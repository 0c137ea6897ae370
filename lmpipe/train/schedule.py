"""Learning-rate schedule as a pure function of the step: nothing stateful to save or restore."""

from __future__ import annotations

import math

SHAPES = ("cosine", "linear", "constant")


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float, shape: str = "cosine") -> float:
    """Linear warmup to `base_lr`, then a decay of the given `shape`.

    Warmup: step s < warmup_steps gives base_lr * (s + 1) / warmup_steps, so the last warmup step
    already trains at base_lr. After warmup, with progress p going from 0 at `warmup_steps` to 1 at
    `total_steps` (and staying 1 beyond):
      cosine:   min + (base - min) * (1 + cos(pi * p)) / 2
      linear:   min + (base - min) * (1 - p)
      constant: base
    where min = min_lr_ratio * base_lr.
    """
    if shape not in SHAPES:
        raise ValueError(f"train.schedule: unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if shape == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        remaining = 1.0 - progress
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * remaining)
