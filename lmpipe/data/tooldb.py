"""The database tool: runs model-written queries against the people world, read-only.

Model output is untrusted input. A query is parsed against the protocol's whitelist first; the
column comes from a fixed table of identifiers and the name is a bound parameter, so nothing the
model writes is ever spliced into SQL, and the connection itself cannot write.
"""

from __future__ import annotations

import random
from pathlib import Path

import duckdb

from lmpipe.core import protocol

_COLUMNS = {attribute: attribute for attribute in protocol.ATTRIBUTES}
_SELECT = {attribute: f"SELECT {column} FROM people WHERE name = ?" for attribute, column in _COLUMNS.items()}


class PeopleDB:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: people database not found (run the prepare stage first)")
        self.con = duckdb.connect(str(path), read_only=True)
        # the connection is read-only, so an answer never changes while it is open; the eval
        # stage's six models ask the same few hundred questions
        self._answers: dict[tuple[str, str], str | None] = {}

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "PeopleDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def lookup(self, query: protocol.Query) -> str | None:
        key = (query.attribute, query.name)
        if key not in self._answers:
            row = self.con.execute(_SELECT[query.attribute], [query.name]).fetchone()
            self._answers[key] = None if row is None else row[0]
        return self._answers[key]

    def answer(self, query_text: str) -> str:
        """The database turn for a model-written query: the value, or an `ERROR: ...` message."""
        try:
            query = protocol.parse_query(query_text)
        except protocol.QueryError as exc:
            return f"ERROR: {exc}"
        value = self.lookup(query)
        return f"ERROR: no person named {query.name}" if value is None else value

    def people(self, split: str) -> list[dict[str, str]]:
        """All people of a split ('train' or 'heldout'), in name order."""
        cursor = self.con.execute("SELECT * FROM people WHERE split = ? ORDER BY name", [split])
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def sample_people(db: PeopleDB, split: str, count: int, seed: int) -> list[dict[str, str]]:
    """`count` people of `split` (all of them if fewer), drawn with `seed`: the people an eval,
    a checkpoint eval, the training accuracy hook or a linear probe asks about."""
    people = db.people(split)
    return random.Random(f"{seed}-{split}").sample(people, min(count, len(people)))
