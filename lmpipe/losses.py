"""Language-model losses on target tokens, and the validation loss over a whole split.

Objectives return the loss *summed* over target tokens: the training loop divides by the number
of targets in the whole (global, accumulated) batch, so data-parallel and gradient-accumulated
steps compute exactly the same mean as one big batch would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmpipe.batching import Batch


def masked_cross_entropy(logits: torch.Tensor, batch: Batch, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of next-token predictions on target positions only."""
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        batch.input_ids[:, 1:].reshape(-1),
        reduction="none",
    ).view_as(batch.target_mask)
    total = (per_token * batch.target_mask).sum()
    return total / batch.target_mask.sum().clamp(min=1) if reduction == "mean" else total


def cross_entropy_objective(model: torch.nn.Module, batch: Batch):
    """The plain language-modelling objective: (summed CE over targets, no extra terms)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return masked_cross_entropy(logits, batch), {}


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches, batch_size: int = 64,
                  max_batches: int = 0) -> float:
    """Mean cross-entropy per target token over `batches.sequential(batch_size)`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i, batch in enumerate(batches.sequential(batch_size)):
        if max_batches and i >= max_batches:
            break
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        total += masked_cross_entropy(logits, batch).item()
        count += batch.n_targets
    model.train(was_training)
    return total / max(count, 1)
