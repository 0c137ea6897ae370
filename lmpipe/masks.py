"""Attention masks beyond plain causal: the prefix-LM mask.

In prefix-LM mode, tokens the model did not write (prompt, user and database turns: the non-target
tokens) attend to each other bidirectionally within their contiguous span, while every token also
attends causally to everything before it. Written (target) tokens stay strictly causal, so no
prediction can see the token it predicts: a given token at position t only ever sees given tokens
of its own span, and the first written token after the span predicts from the span's last token.
"""

from __future__ import annotations

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
