"""Batches as a pure function of (seed, step): whole documents grouped by length, or windows.

`LengthGroupedBatches` sorts documents of similar length into the same batch, which keeps padding
small for dialogs. `WindowBatches` cuts random fixed-length windows out of the token stream, the
nanoGPT way, for plain-text pretraining. Either way a batch depends only on the seed and its index,
so a resumed or data-parallel run sees exactly the batches an uninterrupted single process would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmpipe.data.attention_masks import prefix_lm_mask
from lmpipe.data.tokens import TokenSplit

GROUP = 64  # batches per sorting window: large enough to cut padding, small enough to stay random


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    target_mask: torch.Tensor  # (B, T-1) float: 1 where input_ids[:, t+1] is a training target
    positions: torch.Tensor  # (B, T) int64 flat index into the split's token stream, -1 on padding
    attention: str = "causal"  # or "prefix_lm" (see lmpipe.data.attention_masks)

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """None for plain causal attention (the fast path), else a 4D boolean mask."""
        if self.attention == "causal":
            return None
        return prefix_lm_mask(self.target_mask, self.positions)

    @property
    def n_targets(self) -> int:
        return int(self.target_mask.sum().item())

    @property
    def n_tokens(self) -> int:
        return int((self.positions >= 0).sum().item())

    def rows(self, index: slice | np.ndarray) -> "Batch":
        """A sub-batch of these rows, with padding columns no row needs trimmed off."""
        positions = self.positions[index]
        width = int((positions >= 0).sum(dim=1).max().item()) if len(positions) else 0
        return Batch(self.input_ids[index][:, :width], self.target_mask[index][:, :width - 1],
                     positions[:, :width], self.attention)

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(*(t.to(device, non_blocking=True)
                       for t in (self.input_ids, self.target_mask, self.positions)), self.attention)


class LengthGroupedBatches:
    def __init__(self, split: TokenSplit, batch_size: int, seed: int, pad_id: int,
                 max_len: int | None = None, loss_on: str = "mask", attention: str = "causal") -> None:
        self.split = split
        self.attention = attention
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.loss_on = loss_on
        self.lengths = split.lengths()
        if max_len is not None and self.lengths.max() > max_len:
            raise ValueError(f"a document has {self.lengths.max()} tokens, more than the model's "
                             f"max_seq_len ({max_len}); raise model.max_seq_len or use "
                             "train.sampling: windows")
        # an epoch's remainder (fewer documents than a batch) is dropped: every batch is full,
        # so every process and micro-batch gets its rows (the next epoch reshuffles them in)
        self.batches_per_epoch = len(self.lengths) // batch_size
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._order_epoch(epoch))
        return self._cached[1]

    def _order_epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        # drop the remainder at random, before grouping by length: dropped after sorting it
        # would always be the longest documents
        order = order[:len(order) - len(order) % self.batch_size]
        window = self.batch_size * GROUP
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def doc_ids(self, index: int) -> np.ndarray:
        if not self.batches_per_epoch:  # evaluation only reads `sequential`, which has no limit
            raise ValueError(f"a batch of {self.batch_size} documents is more than the split's "
                             f"{len(self.lengths)}; lower train.batch_size or grad_accum")
        epoch, position = divmod(index, self.batches_per_epoch)
        return self._epoch(epoch)[position]

    def __call__(self, index: int) -> Batch:
        return collate(self.split, self.doc_ids(index), self.pad_id, self.loss_on, self.attention)

    def sequential(self, batch_size: int):
        """Every document once, in order (for evaluation and caching)."""
        for start in range(0, len(self.lengths), batch_size):
            yield collate(self.split, np.arange(start, min(start + batch_size, len(self.lengths))),
                          self.pad_id, self.loss_on, self.attention)


class WindowBatches:
    """`batch_size` random windows of `block_size + 1` tokens from the whole token stream."""

    def __init__(self, split: TokenSplit, batch_size: int, block_size: int, seed: int,
                 loss_on: str = "mask", attention: str = "causal") -> None:
        if split.n_tokens <= block_size + 1:
            raise ValueError(f"the split has {split.n_tokens} tokens, too few for "
                             f"train.block_size = {block_size}")
        self.split, self.batch_size, self.block_size = split, batch_size, block_size
        self.seed, self.loss_on, self.attention = seed, loss_on, attention

    def offsets(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        return rng.integers(0, self.split.n_tokens - self.block_size - 1, size=self.batch_size)

    def _batch(self, starts: np.ndarray) -> Batch:
        """Windows of `block_size + 1` tokens beginning at `starts`."""
        where = starts[:, None] + np.arange(self.block_size + 1)[None, :]
        ids = torch.from_numpy(self.split.tokens[where].astype(np.int64))
        if self.loss_on == "all":
            mask = torch.ones(len(where), self.block_size)
        else:
            mask = torch.from_numpy(self.split.mask[where[:, 1:]].astype(np.float32))
        return Batch(ids, mask, torch.from_numpy(where), self.attention)

    def __call__(self, index: int) -> Batch:
        return self._batch(self.offsets(index))

    def sequential(self, batch_size: int):
        """Consecutive windows whose targets cover the split once (for evaluation and the
        teacher cache). The last window ends at the stream's end; its targets that an earlier
        window already covered are masked out, so every target counts exactly once."""
        last = self.split.n_tokens - self.block_size - 1
        starts = np.arange(0, last, self.block_size)
        for first in range(0, len(starts), batch_size):
            yield self._batch(starts[first:first + batch_size])
        covered = int(starts[-1]) + self.block_size if len(starts) else 0  # first uncovered input
        if covered <= last + self.block_size - 1:
            tail = self._batch(np.array([last]))
            tail.target_mask[:, :max(covered - last, 0)] = 0
            yield tail


def collate(split: TokenSplit, doc_ids: np.ndarray, pad_id: int, loss_on: str = "mask",
            attention: str = "causal") -> Batch:
    spans = split.docs[doc_ids]
    width = int((spans[:, 1] - spans[:, 0]).max())
    ids = np.full((len(spans), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(spans), width), dtype=np.float32)
    positions = np.full((len(spans), width), -1, dtype=np.int64)
    for row, (start, end) in enumerate(spans):
        n = end - start
        ids[row, :n] = split.tokens[start:end]
        mask[row, :n] = 1.0 if loss_on == "all" else split.mask[start:end]
        positions[row, :n] = np.arange(start, end)
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask[:, 1:]), torch.from_numpy(positions),
                 attention)


def make_batches(split: TokenSplit, sampling: str, batch_size: int, block_size: int, seed: int,
                 pad_id: int, max_len: int | None, loss_on: str, attention: str = "causal"):
    """The batch source a TrainParams asks for (`sampling`, `loss_on`, `attention`)."""
    if sampling == "windows":
        if max_len is not None and block_size + 1 > max_len:
            raise ValueError(f"train.block_size + 1 = {block_size + 1} exceeds model.max_seq_len "
                             f"({max_len})")
        return WindowBatches(split, batch_size, block_size, seed, loss_on, attention)
    return LengthGroupedBatches(split, batch_size, seed, pad_id, max_len, loss_on, attention)
