"""What the prefix-cache tests share (tests/eval/test_prefix_cache.py and
test_recurrent_prefix_cache.py): token rows left-padded into a batch, and the check that every
tier is within its byte budget and the cache's index of each tier's nodes agrees with the pages
themselves."""

from __future__ import annotations

import torch

from lmpipe.eval.tree_cache import TreeCache


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def within_budgets(cache: TreeCache) -> None:
    stats = cache.stats()
    for tier, budget in stats["budgets"].items():
        assert budget is None or stats["bytes"][tier] <= budget, (tier, stats)
        # a recurrent cache's split heads hold no page: they belong to no tier
        assert cache.resident[tier] == {n for n in cache.tree.nodes()
                                        if n.payload is not None and n.payload.tier == tier}
