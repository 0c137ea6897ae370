"""lm-eval on Mamba and Hawk: the harness scores each sample as a direct forward does and answers
as lmpipe's own generation loop does, in padded batches of prompts of different lengths, and
run_harness's accuracies are lmpipe's own scoring of the same questions."""

from __future__ import annotations

import json

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.evaluate import accuracy_records, questions_for
from lmpipe.eval.generate import answer_questions
from lmpipe.eval.harness import (
    MC_TASK,
    RECALL_TASK,
    UNBOUNDED_LENGTH,
    hf_model_args,
    lm_class,
    run_harness,
    write_people_tasks,
)
from lmpipe.model.build import build_model, load_model, save_model
from lmpipe.model.params import ModelParams
from lmpipe.train.loop import train
from lmpipe.train.params import TrainParams

MAX_NEW = 24


@pytest.fixture(scope="module", params=["mamba", "mamba2", "hawk"])
def saved(request, tiny_world, tiny_tokens, tokenizer, tmp_path_factory):
    """A briefly trained model (it writes attribute-like answers ending in END, so the greedy
    answers and the choices' log-likelihoods are far from ties) and people tasks for 3 people."""
    pytest.importorskip("lm_eval", reason="pip install 'lmpipe[harness]'")
    arch = request.param
    root = tmp_path_factory.mktemp(f"harness_{arch}")
    model = build_model(ModelParams(arch=arch, d_model=32, n_layers=2, d_state=8), seed=0)
    train(model, TokenSplit.open(tiny_tokens, "train"), TokenSplit.open(tiny_tokens, "val"),
          TrainParams(steps=20, batch_size=8, lr=2e-2, warmup_steps=2, eval_every=1000), None,
          tokenizer.pad_token_id)
    save_model(model.eval(), tokenizer, root / "model")
    with PeopleDB(tiny_world / "people.duckdb") as db:
        people = db.people("train")[:3]
    write_people_tasks(tiny_world / "people.duckdb", people, root / "tasks", max_gen_toks=MAX_NEW)
    return arch, root, people


def _rows(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def _direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | BOS + context) from one unpadded forward."""
    prefix = tokenizer(context)["input_ids"]
    ids = prefix + tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:])
    return logp[torch.arange(len(targets)), targets][len(prefix) - 1:].sum().item()


def test_lm_eval_scores_and_answers_as_lmpipe_does(saved, tokenizer):
    from lm_eval.api.instance import Instance

    arch, root, people = saved
    args = hf_model_args(root / "model")
    assert args["max_length"] == UNBOUNDED_LENGTH  # no position limit in a recurrent config
    lm = lm_class()(**args, device="cpu", batch_size=8)
    model, _ = load_model(root / "model")
    model.eval()

    # log-likelihood: every choice of every question, right-padded batches of 8
    mc = _rows(root / "tasks" / f"{MC_TASK}.jsonl")
    pairs = [(row["prompt"], choice) for row in mc for choice in row["choices"]]
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, pair, i)
                               for i, pair in enumerate(pairs)])
    ours = [_direct_loglikelihood(model, tokenizer, *pair) for pair in pairs]
    assert [t for t, _ in theirs] == pytest.approx(ours, rel=1e-4, abs=1e-4)
    assert len({round(x, 3) for x in ours}) > len(ours) // 2  # not a flat, untrained model

    # greedy answers: prompts of different lengths left-padded together
    questions = questions_for(people)
    prompts = [protocol.prompt(a, n, with_tool=False) for a, n, _ in questions]
    assert len({len(p) for p in prompts}) > 1
    until = {"until": [protocol.END], "do_sample": False, "temperature": 0.0,
             "max_gen_toks": MAX_NEW}
    answers = lm.generate_until([Instance("generate_until", {}, (p, until), i)
                                 for i, p in enumerate(prompts)])
    exchanges = answer_questions(model, tokenizer, [(a, n) for a, n, _ in questions], db=None,
                                 max_new_tokens=MAX_NEW)
    # lm-eval decodes without special tokens (the model, trained on tool dialogs too, may open
    # a tool call), lmpipe keeps them
    assert answers == [tokenizer.decode(tokenizer(ex.answer, add_special_tokens=False)["input_ids"],
                                        skip_special_tokens=True) for ex in exchanges]
    assert sum(ex.answer.strip() != "" for ex in exchanges) >= len(exchanges) // 2

    # run_harness: recall is lmpipe's recall, and multiple-choice accuracy the argmax of the
    # direct log-likelihoods
    records = {r["metric"]: r for r in run_harness(root / "model", [RECALL_TASK, MC_TASK],
                                                   include_path=root / "tasks", batch_size=8)}
    [recall] = [r for r in accuracy_records("recall", "trained", questions, exchanges)
                if r["attribute"] is None]
    assert records["lmeval_exact_match"]["value"] == pytest.approx(recall["value"])
    at, hits = 0, 0
    for row in mc:
        scores = ours[at:at + len(row["choices"])]
        hits += scores.index(max(scores)) == row["label"]
        at += len(row["choices"])
    assert records["lmeval_acc"]["value"] == pytest.approx(hits / len(mc))
    assert records["lmeval_acc"]["n"] == records["lmeval_exact_match"]["n"] == len(mc) == 18
    print(f"{arch}: lm-eval exact_match {records['lmeval_exact_match']['value']:.4f} "
          f"(lmpipe recall {recall['value']:.4f}), acc {records['lmeval_acc']['value']:.4f} "
          f"(direct argmax {hits}/{len(mc)}), max |dll| "
          f"{max(abs(t - o) for (t, _), o in zip(theirs, ours)):.2e} over {len(pairs)} choices")
