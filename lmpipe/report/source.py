"""What the report reads from the run database: one read-only DuckDB connection per render, the
schema probes that let the pages work on older and newer stores (with or without `evals.step`,
`runs.sweep`/`runs.point`, `sweep_points`), and the per-run facts several pages share: sweep points
with their parameters, one parameter's value per run, and the replicate group of each run (a sweep
with `seeds`; lmpipe/store/spread.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from lmpipe.store.spread import run_groups_sql


def parse_json(text: Any) -> Any:
    """A params value (JSON text) as a Python value; unparseable text stays text."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def label(value: Any) -> str | None:
    """A parameter value as a short legend label (numbers without trailing .0)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


@dataclass
class Source:
    """The database behind one render; `empty` when there is no file, no tables or no runs."""

    con: duckdb.DuckDBPyConnection | None
    columns: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def open(cls, db_path: Path) -> Source:
        if not Path(db_path).is_file():
            return cls(None)
        con = duckdb.connect(str(db_path), read_only=True)
        columns: dict[str, set[str]] = {}
        for table, column in con.execute(
                "SELECT table_name, column_name FROM information_schema.columns").fetchall():
            columns.setdefault(table, set()).add(column)
        return cls(con, columns)

    def close(self) -> None:
        if self.con is not None:
            self.con.close()

    def has(self, table: str, *columns: str) -> bool:
        return table in self.columns and set(columns) <= self.columns[table]

    def df(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        assert self.con is not None
        return self.con.execute(sql, params or []).df()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        assert self.con is not None
        row = self.con.execute(sql, params or []).fetchone()
        return row[0] if row else None

    @cached_property
    def empty(self) -> bool:
        if self.con is None or not all(self.has(t) for t in ("runs", "params", "metrics", "evals")):
            return True
        return not self.scalar("SELECT count(*) FROM runs")

    def stage_rows(self, alias: str = "") -> str:
        """SQL condition on `evals` (as `alias`) for the eval stage's figures of whole models: not
        a training run's checkpoint series, nor one turn of a conversation (`evals.turn`; the
        row of all turns together stays). A store without those columns has neither."""
        prefix = f"{alias}." if alias else ""
        conditions = [f"{prefix}{c} IS NULL" for c in ("step", "turn") if self.has("evals", c)]
        return " AND ".join(conditions) or "true"

    def not_in_sweep(self, alias: str = "") -> str:
        """SQL condition on `runs` (as `alias`) for runs outside any sweep (all runs on an older
        store)."""
        column = f"{alias}.sweep" if alias else "sweep"
        return f"{column} IS NULL" if self.has("runs", "sweep") else "true"

    @cached_property
    def run_points(self) -> pd.DataFrame:
        """run_id, sweep, point of every run that belongs to a sweep point."""
        if not self.has("runs", "sweep", "point"):
            return pd.DataFrame(columns=["run_id", "sweep", "point"])
        return self.df("SELECT run_id, sweep, point FROM runs WHERE sweep IS NOT NULL")

    @cached_property
    def sweep_points(self) -> pd.DataFrame:
        """One row per sweep point (sweep, point, status, ..., params as a dict), in sweep order.

        From `sweep_points` when the store has it, else from the runs' sweep/point columns.
        """
        if self.has("sweep_points", "sweep", "point"):
            cols = self.columns["sweep_points"]
            wanted = [c for c in ("sweep", "point", "status", "exp", "attempts", "wall_time_s",
                                  "error", "params", "point_group", "seed", "group_params",
                                  "axes")
                      if c in cols]
            points = self.df(f"SELECT {', '.join(wanted)} FROM sweep_points ORDER BY sweep, point")
        elif len(self.run_points):
            points = (self.run_points.groupby(["sweep", "point"], as_index=False).size()
                      .drop(columns="size").sort_values(["sweep", "point"]))
        else:
            points = pd.DataFrame(columns=["sweep", "point"])
        for column in ("params", "group_params"):
            if column in points:
                points[column] = [p if isinstance(p, dict) else (parse_json(p) or {})
                                  for p in points[column]]
                points[column] = [p if isinstance(p, dict) else {} for p in points[column]]
        if "params" not in points:
            points["params"] = [{} for _ in range(len(points))]
        return points.reset_index(drop=True)

    @cached_property
    def seed_keys(self) -> set[str]:
        """The parameters a seeds axis sets: in a point's params but not in its group's."""
        points = self.sweep_points
        if "group_params" not in points:
            return set()
        return {key for params, group in zip(points["params"], points["group_params"])
                for key in params if key not in group}

    @cached_property
    def run_groups(self) -> pd.DataFrame:
        """run_id, sweep, point_group, seed, group_id, replicates of every run
        (lmpipe/store/spread.py): runs that differ only in their seed share a group id."""
        return self.df(run_groups_sql(self.columns) + " ORDER BY group_id, run_id")

    def run_groups_sql(self) -> str:
        """The SQL behind `run_groups`, for joining in a query."""
        return run_groups_sql(self.columns)

    @cached_property
    def replicated(self) -> bool:
        """Whether any group of runs has more than one replicate."""
        return bool(len(self.run_groups)) and int(self.run_groups["replicates"].max()) > 1

    @cached_property
    def point_keys(self) -> list[str]:
        """The sweep points' parameter keys, in order of first appearance."""
        keys: dict[str, None] = {}
        for params in self.sweep_points["params"]:
            keys.update(dict.fromkeys(params))
        return list(keys)

    def varying_point_keys(self) -> list[str]:
        """Point parameter keys taking more than one value across sweep points (a seeds axis's
        keys are not parameters of the experiment, and do not count)."""
        out = []
        for key in self.point_keys:
            if key in self.seed_keys:
                continue
            values = {label(p.get(key)) for p in self.sweep_points["params"]}
            if len(values) > 1:
                out.append(key)
        return out

    def param_per_run(self, key: str) -> dict[str, Any]:
        """run_id -> value of `key`: the run's sweep point's override when it has one, else the
        run's own resolved params (so keys outside params.json, like a sweep's `mode`, work too)."""
        values = {run_id: parse_json(value) for run_id, value in self.con.execute(
            "SELECT run_id, any_value(value) FROM params WHERE key = ? GROUP BY run_id",
            [key]).fetchall()}
        if key in self.point_keys and len(self.run_points):
            by_point = {(s, p): params[key] for s, p, params in zip(
                self.sweep_points["sweep"], self.sweep_points["point"], self.sweep_points["params"])
                if key in params}
            for run_id, sweep, point in self.run_points.itertuples(index=False):
                if (sweep, point) in by_point:
                    values[run_id] = by_point[(sweep, point)]
        return values
