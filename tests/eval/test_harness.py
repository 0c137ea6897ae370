"""lm-evaluation-harness on lmpipe models: the people tasks ask exactly lmpipe's questions, and a
model trained for real to memorize a small world scores the same recall in lm-eval as in lmpipe's
own evaluator, with lmpipe's prompts encoded by lm-eval token for token (one BOS, not two)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from lmpipe.core import protocol
from lmpipe.data.batching import make_batches
from lmpipe.data.tokens import TokenSplit, tokenize_world, world_documents
from lmpipe.data.tooldb import PeopleDB
from lmpipe.data.world import write_world
from lmpipe.eval.evaluate import accuracy_records, questions_for
from lmpipe.eval.generate import answer_questions
from lmpipe.eval.harness import (
    MAX_CHOICES,
    MC_TASK,
    RECALL_TASK,
    harness_records,
    hf_model_args,
    run_harness,
    write_people_tasks,
    write_text_task,
)
from lmpipe.model.build import build_model, load_model, save_model
from lmpipe.core.section import ConfigError
from lmpipe.data.params import WorldParams
from lmpipe.eval.params import EvalParams
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams
from lmpipe.train.loop import train
from lmpipe.train.losses import evaluate_split


def _rows(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def test_people_tasks_ask_lmpipes_questions_with_bounded_sorted_choices(tiny_world, tmp_path):
    db_path = tiny_world / "people.duckdb"
    with PeopleDB(db_path) as db:
        people = db.people("train")[:5]
        everyone = db.people("train") + db.people("heldout")
    names = write_people_tasks(db_path, people, tmp_path, max_gen_toks=40)
    assert names == [RECALL_TASK, MC_TASK]
    recall, mc = _rows(tmp_path / f"{RECALL_TASK}.jsonl"), _rows(tmp_path / f"{MC_TASK}.jsonl")
    expected = [(protocol.prompt(a, name, with_tool=False), answer)
                for a, name, answer in questions_for(people)]
    assert [(r["prompt"], r["target"]) for r in recall] == expected
    assert [r["prompt"] for r in mc] == [p for p, _ in expected]
    for row, (_, answer) in zip(mc, expected):
        options = [c.removesuffix(protocol.END) for c in row["choices"]]
        assert all(c.endswith(protocol.END) for c in row["choices"])
        assert options[row["label"]] == answer and options == sorted(set(options))
        values = {p[row["attribute"]] for p in everyone}
        assert set(options) <= values
        assert len(options) == min(len(values), MAX_CHOICES)  # 40 birth dates: 16 sampled
    # the distractors are a function of the question: rewriting gives the same files
    write_people_tasks(db_path, people, tmp_path / "again", max_gen_toks=40)
    assert _rows(tmp_path / "again" / f"{MC_TASK}.jsonl") == mc
    config = (tmp_path / f"{RECALL_TASK}.yaml").read_text()
    assert str((tmp_path / f"{RECALL_TASK}.jsonl").resolve()) in config
    assert "max_gen_toks: 40" in config


def test_harness_needs_lm_eval_and_a_people_world(monkeypatch, tmp_path):
    assert EvalParams().harness_tasks == []  # the default pipeline does not run lm-eval
    with pytest.raises(ConfigError, match="people world"):
        harness_records(tmp_path, EvalParams(harness_tasks=["people"]), None, [])
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'lmpipe\[harness\]'"):
        run_harness(tmp_path, ["hellaswag"])


@pytest.fixture(scope="module")
def memorized(tmp_path_factory, tokenizer):
    """A d_model=64 model trained on the QA dialogs of 10 people until it recalls most facts."""
    pytest.importorskip("lm_eval", reason="pip install 'lmpipe[harness]'")
    root = tmp_path_factory.mktemp("harness")
    write_world(WorldParams(seed=3, people=10, heldout_people=0, qa_dialogs=True,
                            tool_dialogs=False), root / "world")
    tokenize_world(root / "world", tokenizer, root / "tokens", val_fraction=0.1, loss_on="assistant",
                   seed=0)
    model = build_model(ModelParams(d_model=64, n_layers=2, n_heads=2, max_seq_len=256), seed=0)
    train(model, TokenSplit.open(root / "tokens", "train"), TokenSplit.open(root / "tokens", "val"),
          TrainParams(steps=250, batch_size=32, lr=1e-2, warmup_steps=10, weight_decay=0.0,
                      eval_every=1000), None, tokenizer.pad_token_id)
    save_model(model.eval(), tokenizer, root / "model")
    with PeopleDB(root / "world" / "people.duckdb") as db:
        people = db.people("train")
    names = write_people_tasks(root / "world" / "people.duckdb", people, root / "tasks")
    return root, people, names


@pytest.mark.slow
def test_lm_eval_recall_equals_lmpipe_recall_on_a_memorized_model(memorized):
    root, people, names = memorized
    records = run_harness(root / "model", names, include_path=root / "tasks")
    scores = {(r["metric"], r["split"]): r for r in records}
    assert set(scores) == {("lmeval_exact_match", RECALL_TASK), ("lmeval_acc", MC_TASK)}
    assert all(r["attribute"] is None for r in records)

    model, tokenizer = load_model(root / "model")
    questions = questions_for(people)
    exchanges = answer_questions(model, tokenizer, [(a, n) for a, n, _ in questions], db=None)
    [ours] = [r for r in accuracy_records("recall", "trained", questions, exchanges)
              if r["attribute"] is None]
    theirs = scores[("lmeval_exact_match", RECALL_TASK)]
    assert theirs["n"] == ours["n"] == len(questions) == 60
    assert round(theirs["value"] * 60) == round(ours["value"] * 60)
    assert theirs["value"] == pytest.approx(ours["value"])
    assert ours["value"] >= 0.5  # memorized (every fact is in training text: lmpipe/data/tokens.py)

    mc = scores[("lmeval_acc", MC_TASK)]
    choices = [len(r["choices"]) for r in _rows(root / "tasks" / f"{MC_TASK}.jsonl")]
    chance = sum(1 / c for c in choices) / len(choices)
    assert mc["n"] == 60 and 0.0 <= mc["value"] <= 1.0
    assert mc["value"] > chance + 0.4

    # limit caps the samples per task
    [limited] = run_harness(root / "model", [RECALL_TASK], include_path=root / "tasks", limit=6)
    assert limited["n"] == 6


@pytest.mark.slow
def test_lm_eval_encodes_lmpipe_prompts_with_one_bos(memorized):
    from lm_eval.models.huggingface import HFLM

    root, people, _ = memorized
    lm = HFLM(**hf_model_args(root / "model"), device="cpu", batch_size=2)
    _, tokenizer = load_model(root / "model")
    prompts = [protocol.prompt("major", people[0]["name"], with_tool=False),
               protocol.prompt("birth_date", people[1]["name"], with_tool=False)]
    ours = [tokenizer(p)["input_ids"] for p in prompts]  # the tokenizer adds the one BOS
    assert ours[0][:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(protocol.USER)]
    assert [lm.tok_encode(p) for p in prompts] == ours
    ids, mask = lm.tok_batch_encode(prompts)
    assert [row[m.bool()].tolist() for row, m in zip(ids, mask)] == ours
    # lm-eval's own tasks (plain text) do get the BOS every lmpipe document starts with
    assert lm.tok_encode("Hello") == [tokenizer.bos_token_id, *b"Hello"]
    assert lm.tok_decode(ours[0], skip_special_tokens=False) == protocol.BOS + prompts[0]


@pytest.mark.slow
def test_unknown_task_is_named_before_the_model_runs(memorized):
    root, _, _ = memorized
    with pytest.raises(ConfigError, match="no_such_task") as err:
        run_harness(root / "model", [RECALL_TASK, "hellaswag", "no_such_task"],
                    include_path=root / "tasks")
    assert "hellaswag" not in str(err.value)  # lm-eval's own tasks are known


@pytest.mark.slow
def test_eval_stage_runs_the_harness_when_asked(memorized):
    from lmpipe.eval.evaluate import evaluate_model, headline

    root, people, _ = memorized
    params = EvalParams(harness_tasks=["people"], harness_limit=12, batch_size=64)
    with PeopleDB(root / "world" / "people.duckdb") as db:
        records, _ = evaluate_model(root / "model", db, TokenSplit.open(root / "tokens", "val"),
                                    params, people, [], TrainParams(),
                                    harness_dir=root / "stage_tasks")
    table = headline(records)
    assert {"lmeval_exact_match_people_recall", "lmeval_acc_people_recall_mc"} <= set(table)
    assert {r["n"] for r in records if r["metric"].startswith("lmeval_")} == {12}
    assert (root / "stage_tasks" / f"{RECALL_TASK}.yaml").is_file()


@pytest.mark.slow
def test_lm_eval_perplexity_of_the_validation_documents_is_lmpipes_val_loss(memorized, tmp_path):
    """Documents carry no BOS and the tokenizer adds one, so lm-eval's rolling log-likelihood
    (which puts its own BOS before each document) scores the tokens lmpipe's val loss scores, and
    nothing else. With the tokenizer's BOS as well (add_bos_token=True), lm-eval would also score
    a BOS predicted from a BOS: the double-BOS mismatch this replaces."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    root, _, _ = memorized
    model, tokenizer = load_model(root / "model")
    tokenize_world(root / "world", tokenizer, tmp_path / "tokens", val_fraction=0.1, loss_on="all",
                   seed=0)
    val = TokenSplit.open(tmp_path / "tokens", "val")
    ours = evaluate_split(model, make_batches(val, "documents", 64, 256, 0, tokenizer.pad_token_id,
                                              256, "all"))
    docs, _, _ = world_documents(root / "world", 0.1, 0)
    texts = [d["text"] for d in docs if d["split"] == "val"]
    assert len(texts) == len(val.docs) == 6 and ours.targets == val.n_tokens - len(texts)

    task = write_text_task(texts, tmp_path / "tasks", name="lmpipe_val")
    scores = {r["metric"]: r for r in run_harness(root / "model", [task],
                                                  include_path=tmp_path / "tasks")}
    assert set(scores) == {"lmeval_word_perplexity", "lmeval_byte_perplexity",
                           "lmeval_bits_per_byte"}
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    their_nats = scores["lmeval_bits_per_byte"]["value"] * n_bytes * math.log(2)
    assert their_nats / ours.targets == pytest.approx(ours.loss, rel=1e-4)

    lm = HFLM(**hf_model_args(root / "model", add_bos_token=True), device="cpu", batch_size=8)
    doubled = -sum(lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]))
    assert doubled / ours.targets > ours.loss + 0.05  # BOS after BOS: never seen in training


def test_knowledge_bits_are_measured_only_when_asked(memorized):
    from lmpipe.eval.evaluate import evaluate_model

    root, people, _ = memorized
    metrics = {}
    with PeopleDB(root / "world" / "people.duckdb") as db:
        for knowledge in (True, False):
            records, _ = evaluate_model(root / "model", db, TokenSplit.open(root / "tokens", "val"),
                                        EvalParams(batch_size=64), people, [], TrainParams(),
                                        knowledge=knowledge)
            metrics[knowledge] = {r["metric"] for r in records}
    assert {"knowledge_bits", "bits_per_param"} <= metrics[True]
    assert not {"knowledge_bits", "bits_per_param"} & metrics[False]
    assert metrics[True] - metrics[False] == {"knowledge_bits", "bits_per_param"}


@pytest.mark.parametrize("world, setting, expected", [
    ({}, "auto", False),                                   # facts only in tool replies
    ({"qa_dialogs": True}, "auto", True),
    ({"bios_per_person": 1}, "auto", True),
    ({}, True, True),
    ({"qa_dialogs": True}, False, False),
])
def test_auto_knowledge_bits_follow_what_the_training_text_states(world, setting, expected):
    from lmpipe.params.config import Params
    from lmpipe.runs.evaluation import measures_knowledge

    params = Params.model_validate({"world": world, "eval": {"knowledge_bits": setting}})
    assert measures_knowledge(params) is expected
