"""Left padding of token rows (lmpipe/eval/padding.py): the generation loop's batch layout."""

import torch

from lmpipe.eval.padding import left_padded, real_tokens


def test_left_padded_right_aligns_rows_and_marks_them():
    ids, mask = left_padded([[5, 6, 7], [9], []], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_real_tokens_undoes_the_padding_even_where_a_token_equals_the_pad():
    rows = [[3, 0, 4], [0], [1, 2, 3, 4]]
    ids, mask = left_padded(rows, pad=0)
    assert real_tokens(ids, mask) == rows
    assert real_tokens(*left_padded([], pad=0)) == []
