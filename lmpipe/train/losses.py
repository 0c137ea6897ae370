"""Language-model losses on target tokens, and the validation loss over a whole split.

Objectives return the loss *summed* over target tokens: the training loop divides by the number
of targets in the whole (global, accumulated) batch, so data-parallel and gradient-accumulated
steps compute exactly the same mean as one big batch would.

Validation (`evaluate_split`) reads `batches.sequential(batch_size)`, the first `max_batches` of
them (0 = all), and returns the summed loss L (nats) over their N target tokens and, given a
tokenizer, the B UTF-8 bytes those same targets stand for, so that

    loss = L / N  (nats/token),      bits per byte = L / (B ln 2)

come from the same positions. B is the length in UTF-8 of the text each run of consecutive target
tokens decodes to (special tokens skipped: a protocol token such as <|end|> is 0 bytes of text,
not the 7 characters of its name); decoding a run whole keeps a character split across byte-level
tokens one character.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmpipe.data.batching import Batch


def predicting_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The logits of the positions that predict a token of the row: every position but the last,
    whose next token lies past the row. The model runs on those T-1 tokens only: a causal
    position's logits depend on the tokens up to it, and under a prefix-LM mask no position that
    predicts a target sees the last token (it would be a given token in a span that ends the
    row), so the values are those of the whole row's forward without its wasted last position."""
    ids, mask = batch.input_ids, batch.attention_mask
    if ids.shape[1] < 2:  # no position predicts anything: the whole row, for the shapes
        return model(input_ids=ids, attention_mask=mask).logits
    return model(input_ids=ids[:, :-1],
                 attention_mask=None if mask is None else mask[..., :-1, :-1]).logits


def masked_cross_entropy(logits: torch.Tensor, batch: Batch, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of next-token predictions on target positions only; `logits` of the whole
    row (T positions) or of its predicting positions (T-1, `predicting_logits`)."""
    per_token = F.cross_entropy(
        logits[:, :batch.target_mask.shape[1]].reshape(-1, logits.size(-1)).float(),
        batch.input_ids[:, 1:].reshape(-1),
        reduction="none",
    ).view_as(batch.target_mask)
    total = (per_token * batch.target_mask).sum()
    return total / batch.target_mask.sum().clamp(min=1) if reduction == "mean" else total


def cross_entropy_objective(model: torch.nn.Module, batch: Batch):
    """The plain language-modelling objective: (summed CE over targets, no extra terms)."""
    return masked_cross_entropy(predicting_logits(model, batch), batch), {}


# plain tensor math over the logits: with `train.compile` the loop compiles it together with the
# model's forward, one graph from ids to loss (as nanoGPT compiles the loss inside its model)
cross_entropy_objective.compiles_with_model = True


@dataclass(frozen=True)
class SplitLoss:
    """Cross-entropy summed over the evaluated targets, their count and (if measured) bytes."""

    nats: float
    targets: int
    bytes: int | None = None

    @property
    def loss(self) -> float:
        """Mean nats per target token."""
        return self.nats / max(self.targets, 1)

    @property
    def bits_per_byte(self) -> float:
        """Nats over the same targets' text, in bits per UTF-8 byte (module docstring)."""
        if not self.bytes:
            raise ValueError(f"bits per byte: the {self.targets} evaluated targets decode to no "
                             "text (only special tokens, or no tokenizer given)")
        return self.nats / (self.bytes * math.log(2))


def target_bytes(tokenizer, batch: Batch) -> int:
    """UTF-8 bytes of the text the batch's target tokens decode to: each run of consecutive
    targets in a row decoded whole, special tokens skipped (0 bytes)."""
    ids, mask = batch.input_ids[:, 1:].cpu(), batch.target_mask.cpu() > 0
    runs = []
    for row_ids, row_mask in zip(ids.tolist(), mask.tolist()):
        run: list[int] = []
        for token, target in zip(row_ids, row_mask):
            if target:
                run.append(token)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
    if not runs:
        return 0
    texts = tokenizer.batch_decode(runs, skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    return sum(len(text.encode("utf-8")) for text in texts)


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, batches, batch_size: int = 64, max_batches: int = 0,
                   tokenizer=None) -> SplitLoss:
    """Summed cross-entropy over the targets of the first `max_batches` (0 = all) batches of
    `batches.sequential(batch_size)`, and with `tokenizer` the bytes of those same targets."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, n_bytes = 0.0, 0, 0
    for i, batch in enumerate(batches.sequential(batch_size)):
        if max_batches and i >= max_batches:
            break
        if tokenizer is not None:
            n_bytes += target_bytes(tokenizer, batch)
        batch = batch.to(device)
        total += masked_cross_entropy(predicting_logits(model, batch), batch).item()
        count += batch.n_targets
    model.train(was_training)
    return SplitLoss(total, count, n_bytes if tokenizer is not None else None)


def evaluate_loss(model: torch.nn.Module, batches, batch_size: int = 64,
                  max_batches: int = 0) -> float:
    """Mean cross-entropy per target token over `batches.sequential(batch_size)`."""
    return evaluate_split(model, batches, batch_size, max_batches).loss
