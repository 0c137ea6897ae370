"""Attention masks beyond plain causal: the prefix-LM mask.

In prefix-LM mode, tokens the model did not write (prompt, user and database turns: the non-target
tokens) attend to each other bidirectionally within their contiguous span, while every token also
attends causally to everything before it. Written (target) tokens stay strictly causal, so no
prediction can see the token it predicts: a given token at position t only ever sees given tokens
of its own span, and the first written token after the span predicts from the span's last token.

A model is read with the mask it was trained with. Outside its own training loop (a teacher run
by the teacher cache, or live under distillation on batches built for the student) its written
tokens are recovered from the token stream itself: `written_targets` takes the split's loss mask
at the batch's flat positions (what `loss_on: mask` trained on), or every real token (`loss_on:
all`, for which the prefix-LM mask is the causal one), and `model_attention_mask` returns

    causal:     (B, T) padding mask, 1 on real tokens
    prefix_lm:  (B, 1, T, T) prefix_lm_mask(written_targets, positions)
"""

from __future__ import annotations

import numpy as np
import torch


def prefix_lm_mask(target_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask, True where query t may attend to key s.

    `target_mask` is (B, T-1) with 1 where token t+1 is a training target (a token the model
    writes); `positions` is (B, T) with -1 on padding.
    """
    batch, width = positions.shape
    written = torch.zeros(batch, width, dtype=torch.bool, device=positions.device)
    written[:, 1:] = target_mask > 0
    real = positions >= 0
    given = real & ~written
    starts = given.clone()
    starts[:, 1:] &= ~given[:, :-1]
    span = torch.cumsum(starts.long(), dim=1) * given  # 0 for written tokens and padding
    same_span = (span[:, :, None] == span[:, None, :]) & given[:, :, None] & given[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=positions.device).tril()
    allowed = (causal[None] | same_span) & real[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=positions.device)[None]  # padding rows
    return allowed[:, None]


def written_targets(positions: torch.Tensor, token_mask: np.ndarray | None) -> torch.Tensor:
    """(B, T-1) float target mask of a batch at flat `positions` of a split ((B, T), -1 on
    padding), as a model trained with `loss_on: mask` saw it: `token_mask` (the split's
    per-token loss mask) at positions[:, 1:]; None means `loss_on: all` (every real token)."""
    following = positions[:, 1:]
    real = following >= 0
    if token_mask is None:
        return real.float()
    flat = following.clamp(min=0).cpu().numpy()
    picked = torch.from_numpy(np.asarray(token_mask)[flat].astype(np.float32))
    return picked.to(positions.device) * real


def model_attention_mask(attention: str, positions: torch.Tensor,
                         token_mask: np.ndarray | None) -> torch.Tensor:
    """The attention mask a model trained with `attention` ("causal" | "prefix_lm") reads a batch
    with, its written tokens taken from the split's `token_mask` (see `written_targets`)."""
    if attention == "causal":
        return (positions >= 0).long()
    if attention != "prefix_lm":
        raise ValueError(f"attention = {attention!r}: expected 'causal' or 'prefix_lm'")
    return prefix_lm_mask(written_targets(positions, token_mask), positions)
