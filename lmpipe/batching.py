"""Length-grouped batches of whole documents, a pure function of (seed, step).

Sorting documents of similar length into the same batch keeps padding small; deriving each batch
from the step number alone means a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmpipe.tokens import TokenSplit

GROUP = 64  # batches per sorting window: large enough to cut padding, small enough to stay random


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    target_mask: torch.Tensor  # (B, T-1) float: 1 where input_ids[:, t+1] is a training target
    positions: torch.Tensor  # (B, T) int64 flat index into the split's token stream, -1 on padding

    @property
    def n_targets(self) -> int:
        return int(self.target_mask.sum().item())


class LengthGroupedBatches:
    def __init__(self, split: TokenSplit, batch_size: int, seed: int, pad_id: int,
                 max_len: int | None = None) -> None:
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.max_len = max_len
        self.lengths = split.lengths()
        if max_len is not None and self.lengths.max() > max_len:
            raise ValueError(f"a document has {self.lengths.max()} tokens, more than the model's "
                             f"max_seq_len ({max_len}); raise model.max_seq_len")
        self.batches_per_epoch = -(-len(self.lengths) // batch_size)
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._order_epoch(epoch))
        return self._cached[1]

    def _order_epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        window = self.batch_size * GROUP
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def doc_ids(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.batches_per_epoch)
        return self._epoch(epoch)[index]

    def __call__(self, step: int) -> Batch:
        return collate(self.split, self.doc_ids(step), self.pad_id)

    def sequential(self, batch_size: int):
        """Every document once, in order (for evaluation and caching)."""
        for start in range(0, len(self.lengths), batch_size):
            yield collate(self.split, np.arange(start, min(start + batch_size, len(self.lengths))),
                          self.pad_id)


def collate(split: TokenSplit, doc_ids: np.ndarray, pad_id: int) -> Batch:
    spans = split.docs[doc_ids]
    width = int((spans[:, 1] - spans[:, 0]).max())
    ids = np.full((len(spans), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(spans), width), dtype=np.float32)
    positions = np.full((len(spans), width), -1, dtype=np.int64)
    for row, (start, end) in enumerate(spans):
        n = end - start
        ids[row, :n] = split.tokens[start:end]
        mask[row, :n] = split.mask[start:end]
        positions[row, :n] = np.arange(start, end)
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask[:, 1:]), torch.from_numpy(positions))
