"""The distily preset of `eval.harness_tasks` (lmpipe/eval/task_names.py) and lmpipe's own
HotpotQA and CoNLL-2003 task files (lmpipe/eval/tasks/), run offline through lm-eval on tiny
fixture datasets in each task's schema (tests/eval/hf_cache.py), placed where a user's datasets
cache holds the real ones."""

from __future__ import annotations

import importlib.util

import pytest

from lmpipe.eval.task_names import PRESETS, expand
from lmpipe.eval.tasks.utils import (
    answer_f1,
    conll_entities,
    hotpotqa_context,
    normalize_answer,
)
from lmpipe.model.build import build_model, save_model
from lmpipe.model.params import ModelParams

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval not installed (pip install 'lmpipe[harness]')")


def test_conll_entities_follow_the_bio_tags():
    tags = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    ids = {t: i for i, t in enumerate(tags)}
    tokens = ["Peter", "Blackburn", "of", "the", "European", "Commission", "Bonn", "German",
              "Paris", "France"]
    bio = ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "I-LOC", "B-MISC", "B-LOC", "B-LOC"]
    # I-LOC after an ORG starts a new entity (conlleval), two adjacent B-LOC are two entities
    assert conll_entities(tokens, [ids[t] for t in bio]) == [
        ("Peter Blackburn", "PER"), ("European Commission", "ORG"), ("Bonn", "LOC"),
        ("German", "MISC"), ("Paris", "LOC"), ("France", "LOC")]
    assert conll_entities(["a", "b"], [0, 0]) == []


def test_hotpotqa_answers_are_scored_as_its_official_metrics_do():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert answer_f1("the Eiffel Tower", "Eiffel tower") == 1.0
    # 2 shared tokens of 3 predicted and 2 gold: P = 2/3, R = 1, F1 = 0.8
    assert answer_f1("Eiffel Tower Paris", "Eiffel Tower") == pytest.approx(0.8)
    assert answer_f1("yes it is", "yes") == 0.0  # yes/no answers count only when exact
    assert answer_f1("Rome", "Paris") == 0.0
    doc = {"supporting_facts": {"title": ["B", "C"], "sent_id": [0, 1]},
           "context": {"title": ["A", "B", "C"],
                       "sentences": [["a."], ["b one.", " b two."], ["c."]]}}
    assert hotpotqa_context(doc) == "B: b one. b two.\nC: c."


def test_the_distily_preset_names_the_benchmarks_it_stands_for():
    assert expand(["distily", "val_text", "mmlu"]) == [*PRESETS["distily"], "val_text"]
    assert set(PRESETS["distily"]) == {"mmlu", "hendrycks_math", "cola", "mnli",
                                       "squad_completion", "triviaqa", "lmpipe_hotpotqa",
                                       "lmpipe_conll2003"}


@needs_lm_eval
@pytest.mark.slow
def test_the_distily_preset_runs_offline_from_the_datasets_cache(tmp_path, monkeypatch,
                                                                  tokenizer):
    import datasets

    from lmpipe.eval.harness import run_harness
    from tests.eval.hf_cache import write_preset_fixtures

    cache = tmp_path / "datasets"
    expected = write_preset_fixtures(cache, rows=1)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    model = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=512), seed=0)
    save_model(model, tokenizer, tmp_path / "model")
    records = run_harness(tmp_path / "model", expand(["distily"]), batch_size=8)
    n = {r["split"]: r["n"] for r in records}
    # every task read its fixture: the sizes lm-eval counted are the fixture's (mmlu and
    # hendrycks_math as groups of 57 and 7 subjects; CoNLL's 2 sentences hold 5 entities)
    assert {task: n.get(task) for task in expected} == expected
    metrics = {(r["split"], r["metric"]) for r in records}
    assert {("lmpipe_hotpotqa", "lmeval_exact_match"), ("lmpipe_hotpotqa", "lmeval_f1"),
            ("lmpipe_conll2003", "lmeval_acc"), ("cola", "lmeval_mcc"), ("mnli", "lmeval_acc"),
            ("triviaqa", "lmeval_exact_match"), ("squad_completion", "lmeval_contains"),
            ("hendrycks_math", "lmeval_exact_match"), ("mmlu", "lmeval_acc")} <= metrics
    # an untrained byte model answers nothing right where an answer must be generated exactly
    scores = {(r["split"], r["metric"]): r["value"] for r in records}
    assert scores[("lmpipe_hotpotqa", "lmeval_exact_match")] == 0.0
    assert scores[("triviaqa", "lmeval_exact_match")] == 0.0
