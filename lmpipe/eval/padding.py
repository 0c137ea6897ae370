"""Left padding of token rows for the batched generation loop (lmpipe/eval/generate.py) and its
prefix caches, and back: built from whole lists in one go, since a batch of 256 prompts padded
row by row costs thousands of small tensor operations."""

from __future__ import annotations

import numpy as np
import torch


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) (B, T) of `rows` left-padded with `pad` to the longest, T; the mask
    is 1 on the rows' tokens."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max(initial=0))
    real = np.arange(width) >= (width - lengths)[:, None]
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    ids[real] = np.fromiter((t for row in rows for t in row), dtype=np.int64,
                            count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(real.astype(np.int64))


def real_tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's tokens without its left padding: `left_padded` undone."""
    widths = mask.sum(1).tolist()
    return [row[len(row) - n:] if n else [] for row, n in zip(ids.tolist(), widths)]
