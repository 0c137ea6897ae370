"""Length-grouped batches: a pure function of (seed, step), every document once per epoch."""

import numpy as np

from lmpipe.data.batching import LengthGroupedBatches
from lmpipe.data.tokens import TokenSplit
from lmpipe.train.schedule import lr_at


def test_batches_depend_only_on_seed_and_step(tiny_tokens, tokenizer):
    split = TokenSplit.open(tiny_tokens, "train")
    a = LengthGroupedBatches(split, 8, seed=5, pad_id=tokenizer.pad_token_id)
    b = LengthGroupedBatches(split, 8, seed=5, pad_id=tokenizer.pad_token_id)
    for step in (0, 3, a.batches_per_epoch + 2, 7, 0):  # out of order, across epochs
        assert np.array_equal(a.doc_ids(step), b.doc_ids(step))
    other = LengthGroupedBatches(split, 8, seed=6, pad_id=tokenizer.pad_token_id)
    assert not np.array_equal(a.doc_ids(0), other.doc_ids(0))


def test_each_epoch_sees_every_document_at_most_once_in_full_batches(tiny_tokens, tokenizer):
    """An epoch's remainder (fewer documents than a batch) is dropped, never served as a short
    batch; the next epoch reshuffles, so it drops other documents."""
    split = TokenSplit.open(tiny_tokens, "train")
    batches = LengthGroupedBatches(split, 8, seed=1, pad_id=tokenizer.pad_token_id)
    n = len(split.docs)
    assert batches.batches_per_epoch == n // 8 and n % 8  # the fixture leaves a remainder
    dropped = []
    for epoch in (0, 1):
        ids = [batches.doc_ids(epoch * batches.batches_per_epoch + i)
               for i in range(batches.batches_per_epoch)]
        assert all(len(b) == 8 for b in ids)
        seen = np.concatenate(ids).tolist()
        assert len(set(seen)) == len(seen) == n - n % 8
        dropped.append(set(range(n)) - set(seen))
    assert dropped[0] != dropped[1]
    batch = batches(0)
    start, end = split.docs[batches.doc_ids(0)[0]]
    assert batch.input_ids[0, : end - start].tolist() == split.tokens[start:end].tolist()
    assert batch.target_mask[0].tolist()[: end - start - 1] == split.mask[start + 1:end].tolist()


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(111)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))
    assert abs(lrs[60] - 0.55) < 1e-9 and abs(lrs[110] - 0.1) < 1e-12


def test_sequential_windows_cover_every_target_exactly_once(tiny_tokens):
    from lmpipe.data.batching import WindowBatches

    split = TokenSplit.open(tiny_tokens, "train")
    for block in (16, 50, 64):
        counts = np.zeros(split.n_tokens, dtype=int)
        for batch in WindowBatches(split, 4, block, 0, loss_on="all").sequential(3):
            label_positions = batch.positions[:, 1:][batch.target_mask > 0].numpy()
            np.add.at(counts, label_positions, 1)
        assert counts[0] == 0 and (counts[1:] == 1).all(), block  # token 0 is never a label
