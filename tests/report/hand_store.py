"""A store written by hand for report tests: every table of the store's schema, then the rows a
test chose for runs, params, evals and sweep points, so a page can be checked against figures
the test knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from lmpipe.store.index import SCHEMA

PARAMS = ["run_id", "key", "value"]
EVALS = ["run_id", "model", "metric", "split", "attribute", "value", "n", "step"]
POINTS = ["sweep", "point", "status", "exp", "attempts", "wall_time_s", "error", "params"]


def write_store(db_path: Path, *, runs: list[dict[str, Any]], params: list[tuple],
                evals: list[tuple], points: list[tuple], point_columns: list[str] = POINTS) -> None:
    """Create every store table, then insert the given rows (runs as dicts, the rest as tuples in
    the column order above; `point_columns` for sweep points that also carry group and seed)."""
    con = duckdb.connect(str(db_path))
    try:
        for name in SCHEMA:
            con.execute(f"CREATE TABLE {name} "
                        f"({', '.join(f'{n} {k}' for n, k in SCHEMA[name])})")
        for name, rows, columns in [("runs", runs, None), ("params", params, PARAMS),
                                    ("evals", evals, EVALS),
                                    ("sweep_points", points, point_columns)]:
            frame = pd.DataFrame(rows, columns=columns)
            con.register("frame", frame)
            con.execute(f"INSERT INTO {name} ({', '.join(frame.columns)}) SELECT * FROM frame")
            con.unregister("frame")
    finally:
        con.close()
