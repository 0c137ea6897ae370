"""Splits at the level of facts (issue 15): every fact the evaluator counts as trained is in
training text, validation text is about people who are never trained, the check refuses a
split that loses facts, and a tiny model trained on a tiny world recalls every fact."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict

import numpy as np
import pytest

from lmpipe.core import protocol
from lmpipe.data.tokens import (
    TokenSplit,
    check_trained_facts,
    read_documents,
    split_documents,
    tokenize_documents,
    world_split,
)
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.data.world import generate_people, validation_count, write_world
from lmpipe.eval.evaluate import accuracy_records, questions_for
from lmpipe.data.params import WorldParams
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams


def _rows(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


@pytest.fixture(scope="module")
def both_worlds(tmp_path_factory):
    """A world with held-out people (they are the validation people) and one without (it makes
    dedicated validation people)."""
    root = tmp_path_factory.mktemp("split")
    write_world(WorldParams(seed=1, people=20, heldout_people=5, bios_per_person=1,
                            qa_dialogs=True), root / "heldout")
    write_world(WorldParams(seed=2, people=12, heldout_people=0, qa_dialogs=True,
                            tool_dialogs=False), root / "dedicated")
    return root


def test_trained_people_and_their_documents_are_those_of_before(tmp_path):
    """Validation people come from a second generator: the trained world is unchanged (these
    hashes are of lmpipe before issue 15, whose texts opened with a BOS that the tokenizer now
    adds: the tokens are the same)."""
    params = WorldParams(seed=3, people=10, heldout_people=0, qa_dialogs=True, tool_dialogs=False)
    people = [p for p in generate_people(params) if p.split == "train"]
    digest = hashlib.sha256(json.dumps([asdict(p) for p in people]).encode()).hexdigest()[:16]
    assert digest == "391196fc0326afcf"
    write_world(params, tmp_path)
    texts = [protocol.BOS + d["text"] for d in _rows(tmp_path / "documents.jsonl")]
    assert hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16] == "a852058f91b1bb97"


def test_training_documents_state_every_trained_fact_and_validation_none(both_worlds):
    for name in ("heldout", "dedicated"):
        folder = both_worlds / name
        with PeopleDB(folder / "people.duckdb") as db:
            trained = {p["name"]: p for p in db.people("train")}
            untrained = {p["name"]: p for s in ("heldout", "validation") for p in db.people(s)}
        train, val = _rows(folder / "documents.jsonl"), _rows(folder / "validation.jsonl")
        assert {d["split"] for d in train} == {"train"} and {d["split"] for d in val} == {"val"}
        assert {d["name"] for d in train} == set(trained)
        assert {d["name"] for d in val} == set(untrained)  # every validation person rendered
        for doc in train + val:
            person = trained.get(doc["name"]) or untrained[doc["name"]]
            assert all(person[a] == v and v in doc["text"] for a, v in doc["facts"].items())
        stated = {(d["name"], a) for d in train for a in d["facts"]}
        assert stated == {(n, a) for n in trained for a in protocol.ATTRIBUTES}
        # the same kinds of document on both sides
        assert {d["kind"] for d in train} == {d["kind"] for d in val}
        info = json.loads((folder / "world.json").read_text())
        assert info["documents"] == len(train) and info["validation_documents"] == len(val)
        assert info["validation_people"] == len(untrained)


def test_without_heldout_people_the_world_makes_validation_people_eval_never_asks(both_worlds):
    folder = both_worlds / "dedicated"
    with PeopleDB(folder / "people.duckdb") as db:
        validation = db.people("validation")
        assert len(validation) == validation_count(12) == math.ceil(12 / 10) == 2
        assert db.people("heldout") == []
        asked = sample_people(db, "train", 100, seed=0) + sample_people(db, "heldout", 100, 0)
    in_training = {d["name"] for d in _rows(folder / "documents.jsonl")}
    assert {p["name"] for p in asked} == in_training  # eval asks trained people, all of them
    assert not {p["name"] for p in validation} & in_training
    with PeopleDB(both_worlds / "heldout" / "people.duckdb") as db:
        heldout = {p["name"] for p in sample_people(db, "heldout", 100, seed=0)}
    assert heldout and not heldout & {d["name"] for d in _rows(both_worlds / "heldout" /
                                                               "documents.jsonl")}


def test_world_split_takes_val_fraction_of_the_validation_people(both_worlds):
    docs = read_documents(both_worlds / "heldout")
    kept, n_val = world_split(docs, val_fraction=0.1, seed=0, trained_people=20)
    assert n_val == 2  # round(0.1 x 20) of the 5 held-out people
    train = [d for d in docs if d["split"] == "train"]
    assert [d for d in kept if d["split"] == "train"] == train  # every training document
    val_names = {d["name"] for d in kept if d["split"] == "val"}
    assert len(val_names) == 2
    # all of each chosen person's documents (bio, 6 Q&A, 6 tool dialogs)
    assert sum(d["split"] == "val" for d in kept) == 2 * 13
    assert world_split(docs, 0.1, 0, 20) == (kept, 2)  # seeded
    assert world_split(docs, 0.9, 0, 20)[1] == 5  # no more than the world has
    assert world_split(docs, 0.01, 0, 20)[1] == 1  # at least one


def test_the_check_refuses_a_split_that_loses_facts(both_worlds):
    docs = read_documents(both_worlds / "dedicated")  # Q&A only: one dialog per fact
    check_trained_facts(docs, trained_people=12)
    # the per-document split of before: some Q&A dialog lands in validation
    _, val_idx = split_documents(len(docs), 0.05, seed=0)
    per_document = [{**d, "split": "val" if i in set(val_idx) else "train"}
                    for i, d in enumerate(docs)]
    with pytest.raises(ValueError, match="is in no training document"):
        check_trained_facts(per_document)
    # a held-out dialog whose fact a biography still states: refused all the same
    bios = read_documents(both_worlds / "heldout")
    first_qa = next(i for i, d in enumerate(bios) if d["kind"] == "qa")
    bios[first_qa] = {**bios[first_qa], "split": "val"}
    with pytest.raises(ValueError, match="validation qa about trained person"):
        check_trained_facts(bios)
    with pytest.raises(ValueError, match="world.json counts 13 trained people"):
        check_trained_facts(docs, trained_people=13)
    with pytest.raises(ValueError, match="no validation documents"):
        world_split([d for d in docs if d["split"] == "train"], 0.05, 0)


def test_tokenize_keeps_the_worlds_split_and_records_it(both_worlds, tokenizer, tmp_path):
    docs, n_val = world_split(read_documents(both_worlds / "heldout"), 0.1, 0, 20)
    texts = [d["text"] for d in docs]
    stats = tokenize_documents(texts, tokenizer, tmp_path, 0.1, "assistant", 0,
                               splits=[d["split"] for d in docs],
                               split_rule={"by": "people", "validation_people": n_val})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["split"] == {"by": "people", "validation_people": 2}
    assert set(meta["sha256"]) == {f"{s}.{p}" for s in ("train", "val")
                                   for p in ("tokens.bin", "mask.bin", "docs.npy")}
    for split in ("train", "val"):
        mine = [t for t, d in zip(texts, docs) if d["split"] == split]
        opened = TokenSplit.open(tmp_path, split)
        assert stats[split]["documents"] == len(mine) == len(opened.docs)
        decoded = [tokenizer.decode(opened.tokens[a:b].tolist()) for a, b in opened.docs]
        assert decoded == [protocol.BOS + t for t in mine]  # one BOS each, from the tokenizer
        assert meta["splits"][split]["max_document_tokens"] == int(opened.lengths().max())
    with pytest.raises(ValueError, match="one 'train' or 'val' per document"):
        tokenize_documents(texts, tokenizer, tmp_path / "bad", 0.1, "assistant", 0,
                           splits=["train"] * (len(texts) - 1))


def test_plain_corpora_keep_the_seeded_per_document_split(tokenizer, tmp_path):
    texts = [protocol.text_document(f"line {i}") for i in range(40)]
    tokenize_documents(texts, tokenizer, tmp_path, 0.1, "all", seed=3)
    _, val_idx = split_documents(40, 0.1, 3)
    val = TokenSplit.open(tmp_path, "val")
    assert [tokenizer.decode(val.tokens[a:b].tolist()) for a, b in val.docs] == \
        [protocol.BOS + texts[i] for i in val_idx]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["split"] == {"by": "document", "val_fraction": 0.1, "seed": 3}


def test_a_tiny_model_memorizing_a_tiny_world_recalls_every_fact(tokenizer, tmp_path):
    """4 people, 24 Q&A dialogs, every one trained on (~20 s on one core). Before issue 15 the
    per-document split held one dialog out, so recall could not reach 1.0. The memorized
    model's knowledge bits approach the world's N·Σ log2|V_a| (155.3 bits)."""
    from lmpipe.eval.generate import answer_questions
    from lmpipe.eval.knowledge import knowledge_records
    from lmpipe.model.build import build_model
    from lmpipe.train.loop import train

    write_world(WorldParams(seed=3, people=4, heldout_people=0, qa_dialogs=True,
                            tool_dialogs=False), tmp_path / "world")
    docs, _ = world_split(read_documents(tmp_path / "world"), 0.05, 0, trained_people=4)
    tokenize_documents([d["text"] for d in docs], tokenizer, tmp_path / "tokens", 0.05,
                       "assistant", 0, splits=[d["split"] for d in docs])
    model = build_model(ModelParams(d_model=64, n_layers=2, n_heads=2, max_seq_len=256), seed=0)
    train(model, TokenSplit.open(tmp_path / "tokens", "train"),
          TokenSplit.open(tmp_path / "tokens", "val"),
          TrainParams(steps=150, batch_size=24, lr=1e-2, warmup_steps=10, weight_decay=0.0,
                      eval_every=1000), None, tokenizer.pad_token_id)
    model.eval()
    with PeopleDB(tmp_path / "world" / "people.duckdb") as db:
        questions = questions_for(db.people("train"))
        exchanges = answer_questions(model, tokenizer, [(a, n) for a, n, _ in questions], db=None)
        bits = knowledge_records(model, tokenizer, db, parameters=1)
    [recall] = [r for r in accuracy_records("recall", "trained", questions, exchanges)
                if r["attribute"] is None]
    assert recall["n"] == 24 and recall["value"] == 1.0
    full = 4 * (math.log2(50 * 12 * 28) + 2 * math.log2(45) + 2 * math.log2(24) + math.log2(25))
    [total] = [r["value"] for r in bits
               if r["metric"] == "knowledge_bits" and r["attribute"] is None]
    assert 0.9 * full <= total <= full + 1e-6
    # the val split is the validation person's dialogs: none of them was trained on
    val = TokenSplit.open(tmp_path / "tokens", "val")
    assert len(val.docs) == 6 and np.asarray(val.mask).sum() > 0
