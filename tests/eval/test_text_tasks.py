"""The validation-text lm-eval tasks (lmpipe/eval/text_tasks.py): the next-line questions are
what they claim, and lm-eval scores them as an independent computation predicts."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lmpipe.core.section import ConfigError
from lmpipe.eval.text_tasks import MIN_LINE_CHARS, next_line_items, validation_texts
from lmpipe.model.build import build_model, save_model
from lmpipe.model.params import ModelParams

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval not installed (pip install 'lmpipe[harness]')")

TEXTS = [
    ("FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\nSpeak, speak, all of us now.\n"
     "You are all resolved rather to die than to famish?\nResolved. resolved, we are indeed."),
    ("MENENIUS:\nWhy, masters, my good friends, mine honest neighbours,\nWill you undo yourselves "
     "with this?\nWe cannot, sir, we are undone already.\nI tell you, friends, most charitable "
     "care\nHave the patricians of you."),
]


def test_next_line_questions_ask_for_the_line_that_follows():
    items = next_line_items(TEXTS, seed=3)
    lines = [[line for line in t.split("\n") if line.strip()] for t in TEXTS]
    # every long line with two lines before it in its document, and no other
    expected = [(d, i) for d, ls in enumerate(lines) for i in range(2, len(ls))
                if len(ls[i]) >= MIN_LINE_CHARS]
    assert len(items) == len(expected) == 7
    for item, (d, i) in zip(items, expected):
        assert item["prompt"] == f"{lines[d][i - 2]}\n{lines[d][i - 1]}\n"
        assert item["choices"][item["label"]] == f"{lines[d][i]}\n"
        assert len(set(item["choices"])) == 4 and item["choices"] == sorted(item["choices"])
        assert all(len(c) > MIN_LINE_CHARS for c in item["choices"])
    assert next_line_items(TEXTS, seed=3) == items  # seeded
    assert len(next_line_items(TEXTS, seed=3, max_items=2)) == 2
    with pytest.raises(ConfigError, match="val_next_line: the validation text has 1 distinct"):
        next_line_items(["a\nb\nthis line is long enough to ask"])


def test_validation_texts_decode_a_token_split_back_to_its_documents(tokenizer):
    ids = [tokenizer.encode(t) for t in TEXTS]  # BOS first, as tokenize writes documents
    assert all(row[0] == tokenizer.bos_token_id for row in ids)
    tokens = np.concatenate([np.array(row) for row in ids])
    ends = np.cumsum([len(row) for row in ids])
    docs = np.stack([ends - [len(row) for row in ids], ends], axis=1)
    assert validation_texts(tokens, docs, tokenizer) == TEXTS


@needs_lm_eval
def test_a_uniform_model_picks_the_shortest_line_as_lm_eval_scores_it(tmp_path, tokenizer):
    """A model whose every next byte is equally likely gives a choice the log-likelihood
    -len(bytes) x log V, so lm-eval's `acc` must pick the shortest choice (the first of equally
    long ones, numpy's argmax): predicted here from the questions alone."""
    from lmpipe.eval.harness import run_harness
    from lmpipe.eval.text_tasks import write_next_line_task

    model = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=256), seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: uniform over the vocabulary
    save_model(model, tokenizer, tmp_path / "model")
    name = write_next_line_task(TEXTS, tmp_path / "tasks", seed=1)
    items = next_line_items(TEXTS, seed=1)
    shortest = np.mean([int(np.argmax([-len(c.encode()) for c in it["choices"]]) == it["label"])
                        for it in items])
    scores = {r["metric"]: r["value"] for r in run_harness(tmp_path / "model", [name],
                                                           include_path=tmp_path / "tasks")}
    assert 0 < shortest < 1 and scores["lmeval_acc"] == pytest.approx(shortest)
