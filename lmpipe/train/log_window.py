"""The training log's window: what the steps since the last log record add up to, and the record
they make (loss per target, speed, time per phase, MFU, memory, the objective's extra terms).

The sums stay on the device, so no step waits for a host sync; only the record reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from lmpipe.core import profiler


class LogWindow:
    """Loss and target counts, tokens, steps and the objective's extra terms since the last log
    record. `per_step_metrics`: extra terms reported once a step (a cosine, a confidence), so
    averaged over steps and replicas rather than normalised by targets."""

    def __init__(self, device: torch.device, per_step_metrics: set[str], replicas: int) -> None:
        self.loss = torch.zeros((), device=device)
        self.targets = torch.zeros((), device=device)
        self.tokens = 0
        self.steps = 0
        self.extras: dict[str, Any] = {}
        self.per_step_metrics = per_step_metrics
        self.replicas = replicas

    def add(self, loss_sum: torch.Tensor, targets: torch.Tensor, tokens: int,
            extras: dict[str, torch.Tensor]) -> None:
        """One optimizer step's sums, already summed over the data-parallel replicas."""
        self.loss += loss_sum
        self.targets += targets
        self.tokens += tokens
        self.steps += 1
        for key, value in extras.items():
            self.extras[key] = self.extras.get(key, 0) + value

    def record(self, step: int, tokens_seen: int, phases: dict[str, float],
               flops_token: float, peak: float, device: torch.device) -> dict[str, Any]:
        """The log record of this window ending at `step`, its time split by `phases` (seconds)."""
        busy = sum(phases.values())
        tokens_per_s = self.tokens / max(busy, 1e-9)
        return {
            "step": step, "tokens": tokens_seen,
            "loss": (self.loss / self.targets).item(),
            "tokens_per_s": tokens_per_s, "step_time_s": busy / self.steps,
            **{k: v / self.steps for k, v in phases.items()},
            "mfu": profiler.mfu(tokens_per_s, flops_token, peak),
            **profiler.memory_record(device),
            **{k: (v / (self.steps * self.replicas if k in self.per_step_metrics
                        else self.targets)).item()
               for k, v in self.extras.items()},
        }
