"""Accuracy during training: recall without the tool and accuracy with it, at every eval step.

With `train.eval_people: N` (people world only), each eval step asks the same N trained people's
six attributes twice, greedily: once with no tool (the answer must come from the weights: logged as
`recall`) and once with the database tool (`tool_accuracy`, beside the rates of valid calls and of
well-formed calls for the wrong person or attribute: `tool_call_rate`, `tool_call_wrong_person`,
`tool_call_wrong_attribute`, as lmpipe/eval/evaluate.py defines them). The curves show when a model
learns to look facts up and when, if ever, it memorizes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval.evaluate import score_questions


def accuracy_hook(db_path: Path, tokenizer, people: int, seed: int = 0,
                  max_new_tokens: int = 48) -> Callable[[torch.nn.Module], dict[str, float]]:
    """A function of the model returning {"recall": .., "tool_accuracy": .., and the three
    tool-call rates} on a fixed sample."""
    with PeopleDB(db_path) as db:
        asked = sample_people(db, "train", people, seed)
    batch = len(asked) * len(protocol.ATTRIBUTES)  # every question in one batch

    def score(model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        with PeopleDB(db_path) as db, torch.no_grad():
            for tool in (None, db):
                records, _ = score_questions(model, tokenizer, "trained", asked, tool,
                                             max_new_tokens, batch)
                out.update((r["metric"], r["value"]) for r in records if r["attribute"] is None)
        model.train(was_training)
        return out

    return score
