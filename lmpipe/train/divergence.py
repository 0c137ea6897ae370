"""Divergence: a non-finite loss or gradient stops a training run at that step, on every
data-parallel process alike, before the optimizer applies it."""

from __future__ import annotations

import torch

from lmpipe.train.distributed import Dist


class Diverged(RuntimeError):
    """A non-finite loss or gradient: the run stops at that step, before the optimizer applies
    it, and nothing from it is saved (the run log records status `diverged`)."""

    status = "diverged"

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"diverged at step {step}: {what}")
        self.step = step


def check_finite(step: int, loss_sum: torch.Tensor, grad_norm: torch.Tensor, dist: Dist) -> None:
    """Raise Diverged (on every process alike) when the loss or the gradient is not finite."""
    bad = torch.stack([(~torch.isfinite(loss_sum)).float(), (~torch.isfinite(grad_norm)).float()])
    bad = dist.all_sum(bad)
    if bad.any():
        what = " and ".join(name for name, flag in zip(("loss", "gradient norm"), bad) if flag)
        raise Diverged(step, f"non-finite {what}")
