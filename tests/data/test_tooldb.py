"""The database tool treats model output as untrusted: whitelist parse, bound values, read-only."""

import duckdb
import pytest

from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB


def test_parse_accepts_the_grammar_and_rejects_the_rest():
    q = protocol.parse_query("FIND birth_city FOR Ada Brown")
    assert (q.attribute, q.name) == ("birth_city", "Ada Brown")
    for bad in ["FIND salary FOR Ada Brown", "find birth_city for Ada Brown",
                "FIND birth_city FOR Ada'; DROP TABLE people; --", "FIND birth_city FOR", ""]:
        with pytest.raises(protocol.QueryError):
            protocol.parse_query(bad)


def test_answers_values_and_error_turns(tiny_world):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        person = db.people("heldout")[0]
        assert db.answer(f"FIND university FOR {person['name']}") == person["university"]
        assert db.answer("FIND university FOR Nobody Here").startswith("ERROR: no person named")
        assert db.answer("SELECT * FROM people").startswith("ERROR: malformed query")
        assert db.answer("FIND password FOR Ada Brown") == "ERROR: unknown attribute 'password'"


def test_a_question_asked_again_is_answered_without_another_query(tiny_world):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        person, other = db.people("train")[:2]
        assert db.answer(f"FIND major FOR {person['name']}") == person["major"]
        assert db.answer("FIND major FOR Nobody Here").startswith("ERROR: no person named")
        real = db.con
        db.con = None  # any further SQL would fail
        assert db.answer(f"FIND major FOR {person['name']}") == person["major"]
        assert db.answer("FIND major FOR Nobody Here").startswith("ERROR: no person named")
        with pytest.raises(AttributeError):  # a new question does reach the database
            db.answer(f"FIND major FOR {other['name']}")
        db.con = real


def test_injection_is_inert_and_connection_is_read_only(tiny_world):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        before = len(db.people("train"))
        name = "Ada Brown' OR '1'='1"
        assert db.lookup(protocol.Query("major", name)) is None
        with pytest.raises(duckdb.Error):
            db.con.execute("DELETE FROM people")
        assert len(db.people("train")) == before


def test_missing_database_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="people.duckdb: people database not found"):
        PeopleDB(tmp_path / "people.duckdb")
