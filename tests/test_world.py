"""The people world: deterministic, unique names, held-out people absent from training text."""

import json

import duckdb

from lmpipe import protocol
from lmpipe.config import WorldParams
from lmpipe.world import documents, generate_people, write_world


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


def test_tool_dialog_answers_match_the_database(tmp_path):
    write_world(WorldParams(seed=2, people=20, heldout_people=0), tmp_path)
    with duckdb.connect(str(tmp_path / "people.duckdb"), read_only=True) as con:
        for doc in map(json.loads, (tmp_path / "documents.jsonl").open()):
            if doc["kind"] != "tool":
                continue
            value = con.execute(f"SELECT {doc['attribute']} FROM people WHERE name = ?",
                                [doc["name"]]).fetchone()[0]
            assert doc["text"] == protocol.tool_dialog(doc["attribute"], doc["name"], value)
            assert f"{protocol.DB}{value}{protocol.END}" in doc["text"]

