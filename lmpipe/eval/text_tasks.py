"""lm-eval tasks over plain text: the validation documents of any corpus, as local task files.

- `write_text_task` (`val_text` in `eval.harness_tasks`): rolling log-likelihood over the
  documents. lm-eval reports word_perplexity, byte_perplexity and bits_per_byte over the texts'
  UTF-8 bytes; `run_harness` runs it without the tokenizer's BOS, so its summed log-likelihood
  is that of lmpipe's validation loss with `loss_on: all` (tests/eval/test_harness.py).
- `write_next_line_task` (`val_next_line`): a line of a document and the lines before it; the
  model picks the true next line among four, three drawn from other places of the same texts.
  Chance is 0.25. lm-eval's `acc` compares summed log-likelihoods, so it favours short lines;
  `acc_norm` divides by the line's length in bytes, which a tokenizer cannot change.
- `validation_texts`: the validation split's documents back as text, decoded from its tokens
  (so every corpus and tokenizer works without the prepare stage's files).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from lmpipe.core.section import ConfigError
from lmpipe.eval.task_files import write_task
from lmpipe.eval.task_names import VAL_NEXT_LINE_TASK, VAL_TEXT_TASK

MIN_LINE_CHARS = 20  # shorter lines ("ROMEO:", "Exeunt.") are told apart by their shape alone
CONTEXT_LINES = 2
CHOICES = 4
MAX_ITEMS = 500


def write_text_task(texts: list[str], out_dir: str | Path, name: str = VAL_TEXT_TASK) -> str:
    """Write a rolling log-likelihood (perplexity) task over `texts` into `out_dir`; return its
    name. Texts are documents as `prepare` writes them (no BOS: the tokenizer adds it)."""
    if not texts:
        raise ConfigError("write_text_task: no texts")
    return write_task(out_dir, name, [{"text": t} for t in texts],
                      output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="text",
                      metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity",
                                                           "bits_per_byte")])


def next_line_items(texts: list[str], seed: int = 0, max_items: int = MAX_ITEMS,
                    context_lines: int = CONTEXT_LINES) -> list[dict]:
    """The next-line questions over `texts`: `{prompt, choices, label}` rows.

    A question is a line of at least MIN_LINE_CHARS characters that has `context_lines` lines
    before it in its document; the prompt is those lines, each ending in a newline. The choices
    are the true line and CHOICES - 1 other distinct long lines of the texts, each with its
    newline (so a line that starts another is not favoured for ending early), sorted so the
    answer's position carries no signal. At most `max_items` questions, a seeded sample."""
    documents = [[line for line in text.split("\n") if line.strip()] for text in texts]
    pool = sorted({line for lines in documents for line in lines
                   if len(line.strip()) >= MIN_LINE_CHARS})
    if len(pool) < CHOICES:
        raise ConfigError(f"{VAL_NEXT_LINE_TASK}: the validation text has {len(pool)} distinct "
                          f"lines of >= {MIN_LINE_CHARS} characters, {CHOICES} needed")
    places = [(d, i) for d, lines in enumerate(documents)
              for i in range(context_lines, len(lines))
              if len(lines[i].strip()) >= MIN_LINE_CHARS]
    rng = random.Random(seed)
    if len(places) > max_items:
        places = sorted(rng.sample(places, max_items))
    items = []
    for d, i in places:
        answer = documents[d][i]
        others = rng.sample([line for line in pool if line != answer], CHOICES - 1)
        options = sorted([answer, *others])
        items.append({"prompt": "".join(f"{line}\n" for line in documents[d][i - context_lines:i]),
                      "choices": [f"{o}\n" for o in options], "label": options.index(answer)})
    return items


def write_next_line_task(texts: list[str], out_dir: str | Path, seed: int = 0,
                         max_items: int = MAX_ITEMS, name: str = VAL_NEXT_LINE_TASK) -> str:
    """Write the next-line multiple-choice task over `texts` (`next_line_items`) into `out_dir`;
    return its name."""
    return write_task(out_dir, name, next_line_items(texts, seed, max_items),
                      output_type="multiple_choice", doc_to_choice="choices",
                      doc_to_target="label",
                      metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                   for m in ("acc", "acc_norm")])


def validation_texts(tokens: np.ndarray, docs: np.ndarray, tokenizer) -> list[str]:
    """The documents of a token split (`tokens`, `docs` rows [start, end)) as text: each decoded
    without the BOS the tokenizer adds and without padding."""
    drop = {tokenizer.bos_token_id, tokenizer.pad_token_id} - {None}
    texts = []
    for start, end in docs.tolist():
        ids = [int(t) for t in tokens[start:end] if int(t) not in drop]
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts
