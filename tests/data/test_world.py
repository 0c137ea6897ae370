"""The people world: deterministic, unique names, held-out people absent from training text
(they are in validation text only; tests/data/test_split.py has the split's properties)."""

import json

import duckdb
import pytest

from lmpipe.core import protocol
from lmpipe.data.world import (
    FIRST_NAMES,
    LAST_NAMES,
    check_split,
    documents,
    generate_people,
    write_world,
)
from lmpipe.data.params import WorldParams


def test_same_seed_same_world_and_different_seed_differs():
    params = WorldParams(seed=7, people=50, heldout_people=5)
    assert generate_people(params) == generate_people(params)
    assert generate_people(params) != generate_people(WorldParams(seed=8, people=50, heldout_people=5))
    docs = list(documents(generate_people(params), params))
    assert docs == list(documents(generate_people(params), params))


def test_names_are_unique_and_splits_sized():
    people = generate_people(WorldParams(seed=0, people=2000, heldout_people=500))
    assert len({p.name for p in people}) == 2500
    assert sum(p.split == "train" for p in people) == 2000
    assert sum(p.split == "heldout" for p in people) == 500


def test_documents_cover_trained_people_only(tmp_path):
    params = WorldParams(seed=1, people=40, heldout_people=10, bios_per_person=1, qa_dialogs=True)
    stats = write_world(params, tmp_path)
    docs = [json.loads(line) for line in (tmp_path / "documents.jsonl").open()]
    assert stats["documents"] == len(docs) == 40 * (1 + 6 + 6)
    with duckdb.connect(str(tmp_path / "people.duckdb"), read_only=True) as con:
        heldout = [r[0] for r in con.execute("SELECT name FROM people WHERE split='heldout'").fetchall()]
        assert con.execute("SELECT count(*) FROM people").fetchone()[0] == 50
    text = "\n".join(d["text"] for d in docs)
    assert len(heldout) == 10 and not any(name in text for name in heldout)
    val = [json.loads(line) for line in (tmp_path / "validation.jsonl").open()]
    assert stats["validation_documents"] == len(val) == 10 * (1 + 6 + 6)
    assert {d["name"] for d in val} == set(heldout)


def test_a_split_that_loses_a_fact_is_refused():
    params = WorldParams(seed=1, people=5, heldout_people=2, qa_dialogs=True, tool_dialogs=False)
    people = generate_people(params)
    docs = list(documents(people, params))
    check_split(people, docs)
    dropped = [d for d in docs if not (d["split"] == "train" and d["attribute"] == "major")]
    with pytest.raises(ValueError, match="major is in no training document"):
        check_split(people, dropped)
    moved = [{**d, "split": "val"} if d is docs[0] else d for d in docs]
    with pytest.raises(ValueError, match="validation qa document is about trained person"):
        check_split(people, moved)


def test_no_name_left_for_a_validation_person_is_a_clear_error():
    everyone = len(FIRST_NAMES) * len(LAST_NAMES)
    with pytest.raises(ValueError, match="leaves none for a validation person"):
        generate_people(WorldParams(people=everyone, heldout_people=0))


def test_tool_dialog_answers_match_the_database(tmp_path):
    write_world(WorldParams(seed=2, people=20, heldout_people=0), tmp_path)
    with duckdb.connect(str(tmp_path / "people.duckdb"), read_only=True) as con:
        # validation people (world.heldout_people = 0) are in the database too
        lines = [*(tmp_path / "documents.jsonl").open(), *(tmp_path / "validation.jsonl").open()]
        assert any('"split": "val"' in line and '"tool"' in line for line in lines)
        for doc in map(json.loads, lines):
            if doc["kind"] != "tool":
                continue
            value = con.execute(f"SELECT {doc['attribute']} FROM people WHERE name = ?",
                                [doc["name"]]).fetchone()[0]
            assert doc["text"] == protocol.tool_dialog(doc["attribute"], doc["name"], value)
            assert f"{protocol.DB}{value}{protocol.END}" in doc["text"]



def test_conversations_ask_distinct_attributes_in_turn_and_train_only_the_models_turns(tmp_path):
    from lmpipe.data.tokenizer import build_byte_tokenizer, loss_mask
    from lmpipe.data.tokens import check_trained_facts

    params = WorldParams(seed=4, people=12, heldout_people=3, conversations_per_person=2,
                         conversation_turns=4, tool_error_rate=0.25)
    people = {p.name: p for p in generate_people(params)}
    docs = list(documents(list(people.values()), params))
    talks = [d for d in docs if d["kind"] == "conversation"]
    assert len(talks) == 2 * (12 + 3) and {d["split"] for d in talks} == {"train", "val"}
    busy = 0
    tokenizer = build_byte_tokenizer()
    for doc in talks:
        person, asked = people[doc["name"]], doc["attributes"]
        assert len(set(asked)) == 4 and doc["facts"] == {a: person.value(a) for a in asked}
        assert doc["text"].count(protocol.USER) == 4 and doc["text"].endswith(protocol.EOS)
        for attribute in asked:  # each question, its query (retried when busy), its answer
            value = person.value(attribute)
            call = f"{protocol.CALL}FIND {attribute} FOR {person.name}{protocol.END}"
            assert f"{protocol.question(attribute, person.name)}{protocol.END}" in doc["text"]
            assert f"{call}{protocol.DB}{value}{protocol.END}{protocol.ASSISTANT}{value}{protocol.END}" \
                in doc["text"]
        busy += doc["text"].count(protocol.TOOL_BUSY)
        # trained: exactly the assistant turns (queries, retries, answers), never the user's,
        # the database's or the system's
        ids = tokenizer(doc["text"])["input_ids"]
        trained = tokenizer.decode([i for i, m in zip(ids, loss_mask(ids)) if m])
        calls = doc["text"].count(protocol.CALL)
        assert calls == 4 + doc["text"].count(protocol.TOOL_BUSY)
        assert trained.count(protocol.CALL) == calls and protocol.USER not in trained
        assert protocol.TOOL_BUSY not in trained and "Which" not in trained
    assert 0.1 < busy / (len(talks) * 4) < 0.4  # about a quarter of the rounds met a busy database
    check_trained_facts(docs)  # conversations state their person's facts like dialogs do
    with pytest.raises(ValueError, match="expected tool_dialogs or qa_dialogs"):
        WorldParams(conversations_per_person=1, tool_dialogs=False)
