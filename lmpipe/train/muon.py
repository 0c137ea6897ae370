"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Keller Jordan, 2024; torch.optim.Muon) replaces a matrix's momentum-smoothed gradient by
its nearest semi-orthogonal matrix (Newton-Schulz iterations): every direction of the update gets
the same size. It is defined for 2-D weights of hidden layers; the embeddings, the output head,
norms and biases stay on AdamW, as in Keller Jordan's and Moonshot's setups ("Muon is Scalable
for LLM Training", 2025). Muon's step is scaled by 0.2 * sqrt(max(rows, cols)) (torch's
`adjust_lr_fn="match_rms_adamw"`), which gives its update the RMS of an AdamW update, so the
learning rate and weight decay tuned for AdamW carry over, and one schedule drives both.

`MuonWithAdamW` is what the training loop needs of an optimizer: `param_groups` (the loop writes
each group's `lr` every step), `step`, `zero_grad`, `state_dict` and `load_state_dict`
(checkpoints, lmpipe/train/checkpoint.py).
"""

from __future__ import annotations

from typing import Any

import torch


class MuonWithAdamW:
    """torch Muon over `matrices`, torch AdamW over `rest` (both lists of (name, parameter));
    weight decay on the matrices only, as every lmpipe optimizer has it (lmpipe/train/optim.py)."""

    def __init__(self, matrices: list[tuple[str, torch.Tensor]],
                 rest: list[tuple[str, torch.Tensor]], lr: float, weight_decay: float,
                 momentum: float, betas: tuple[float, float], **adamw_kernel: Any) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        if matrices:
            self.optimizers.append(torch.optim.Muon(
                matrices, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True,
                adjust_lr_fn="match_rms_adamw"))
        if rest:
            self.optimizers.append(torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=0.0,
                                                     **adamw_kernel))
        if not self.optimizers:
            raise ValueError("optimizer muon: the model has no trainable parameters")

    @property
    def param_groups(self) -> list[dict]:
        """Muon's group (weight decay) first, then AdamW's: the dicts the optimizers read."""
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def defaults(self) -> dict:
        return self.optimizers[0].defaults

    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("optimizer muon: step(closure) is not supported")
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {type(opt).__name__: opt.state_dict() for opt in self.optimizers}

    def load_state_dict(self, state: dict) -> None:
        names = [type(opt).__name__ for opt in self.optimizers]
        if sorted(state) != sorted(names):
            raise ValueError(f"optimizer muon: the checkpoint holds the states of {sorted(state)}, "
                             f"expected {sorted(names)} (was it saved with another optimizer?)")
        for opt in self.optimizers:
            opt.load_state_dict(state[type(opt).__name__])
