"""The run database: every run folder under a runs root, loaded into one DuckDB file.

`index_runs` scans `runs_root` (any directory directly under it holding `summary.json` or
`params.json` is a run; its folder name is the run id) and rebuilds these tables in a single
transaction, so re-indexing is idempotent and a reader never sees a half-built database:

    runs(run_id, stage, name, status, started_at, ended_at, wall_time_s, peak_rss_mb,
         git_commit, git_dirty, host, device, lmpipe_version, torch, transformers, path)
    params(run_id, key, value)            key = dotted path ("train.lr"), value = JSON text
    metrics(run_id, step, name, value)    long format: one row per numeric field per step
    evals(run_id, model, metric, split, attribute, value, n, step)
                                          step: the checkpoint a training run's eval series
                                          measured (lmpipe/checkpoint_eval.py); null for the
                                          eval stage's rows
    summaries(run_id, key, value, value_num)   summary.json keys beyond the fixed ones

Timestamps are stored in UTC. A run without `summary.json` (crashed hard, or still running) has
status "incomplete". Unparseable JSONL lines (a crash mid-write) are skipped and counted, never
fatal. `query` answers SQL against the file read-only, e.g.
`query("runs.duckdb", "SELECT run_id, min(value) FROM metrics WHERE name = 'loss' GROUP BY 1")`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

log = logging.getLogger(__name__)

SCHEMA: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR PRIMARY KEY"), ("stage", "VARCHAR"), ("name", "VARCHAR"),
        ("status", "VARCHAR"), ("started_at", "TIMESTAMP"), ("ended_at", "TIMESTAMP"),
        ("wall_time_s", "DOUBLE"), ("peak_rss_mb", "DOUBLE"), ("git_commit", "VARCHAR"),
        ("git_dirty", "BOOLEAN"), ("host", "VARCHAR"), ("device", "VARCHAR"),
        ("lmpipe_version", "VARCHAR"), ("torch", "VARCHAR"), ("transformers", "VARCHAR"),
        ("path", "VARCHAR"),
    ],
    "params": [("run_id", "VARCHAR"), ("key", "VARCHAR"), ("value", "VARCHAR")],
    "metrics": [("run_id", "VARCHAR"), ("step", "BIGINT"), ("name", "VARCHAR"),
                ("value", "DOUBLE")],
    "evals": [("run_id", "VARCHAR"), ("model", "VARCHAR"), ("metric", "VARCHAR"),
              ("split", "VARCHAR"), ("attribute", "VARCHAR"), ("value", "DOUBLE"),
              ("n", "BIGINT"), ("step", "BIGINT")],
    "summaries": [("run_id", "VARCHAR"), ("key", "VARCHAR"), ("value", "VARCHAR"),
                  ("value_num", "DOUBLE")],
}

# summary.json keys that become `runs` columns; every other key goes to `summaries`.
SUMMARY_FIXED = {"stage", "name", "status", "started_at", "ended_at", "wall_time_s", "peak_rss_mb"}
ENV_COLUMNS = ("git_commit", "git_dirty", "host", "device", "lmpipe_version", "torch",
               "transformers")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number(x: Any) -> float | None:
    return float(x) if _is_number(x) else None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} if the file is missing or not a JSON object."""
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring unreadable %s", path)
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects in `path`, and how many non-blank lines were not JSON objects."""
    records: list[dict[str, Any]] = []
    skipped = 0
    if not path.is_file():
        return records, skipped
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                skipped += 1
    return records, skipped


def _timestamp(value: Any) -> datetime | None:
    """An ISO string as a naive UTC datetime (naive inputs are taken as UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of a nested dict; lists and empty dicts are leaves."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{path}.")
        else:
            yield path, value


def _text(x: Any) -> str | None:
    return None if x is None else str(x)


def _env_value(env: dict[str, Any], column: str) -> Any:
    value = env.get(column)
    if column == "git_dirty":
        return value if isinstance(value, bool) else None
    return _text(value)


def _integer(x: Any) -> int | None:
    return int(x) if _is_number(x) and float(x).is_integer() else None


def discover_runs(runs_root: Path) -> list[Path]:
    """Run folders directly under `runs_root`, sorted by name."""
    if not runs_root.is_dir():
        return []
    return sorted(p for p in runs_root.iterdir()
                  if p.is_dir() and ((p / "summary.json").is_file() or (p / "params.json").is_file()))


def _collect(runs_root: Path) -> tuple[dict[str, list[tuple]], int]:
    """Rows for every table, and the number of skipped JSONL lines."""
    rows: dict[str, list[tuple]] = {table: [] for table in SCHEMA}
    skipped = 0
    for folder in discover_runs(runs_root):
        run_id = folder.name
        summary = _read_json(folder / "summary.json")
        env = _read_json(folder / "env.json")
        rows["runs"].append((
            run_id, summary.get("stage"), summary.get("name"),
            summary.get("status") or "incomplete",
            _timestamp(summary.get("started_at") or env.get("started_at")),
            _timestamp(summary.get("ended_at") or env.get("ended_at")),
            _number(summary.get("wall_time_s")), _number(summary.get("peak_rss_mb")),
            *(_env_value(env, col) for col in ENV_COLUMNS),
            str(folder.resolve()),
        ))
        for key, value in flatten(_read_json(folder / "params.json")):
            rows["params"].append((run_id, key, json.dumps(value, sort_keys=True, default=str)))
        for key, value in summary.items():
            if key not in SUMMARY_FIXED:
                rows["summaries"].append((run_id, key, json.dumps(value, sort_keys=True, default=str),
                                          _number(value)))

        records, bad = _read_jsonl(folder / "metrics.jsonl")
        skipped += bad
        for record in records:
            step = _integer(record.get("step"))
            if step is None:
                skipped += 1
                continue
            rows["metrics"].extend((run_id, step, name, float(value))
                                   for name, value in record.items()
                                   if name != "step" and _is_number(value))

        records, bad = _read_jsonl(folder / "evals.jsonl")
        skipped += bad
        for r in records:
            if not (isinstance(r.get("model"), str) and isinstance(r.get("metric"), str)
                    and _is_number(r.get("value"))):
                skipped += 1
                continue
            rows["evals"].append((run_id, r["model"], r["metric"], _text(r.get("split")),
                                  _text(r.get("attribute")), float(r["value"]),
                                  _integer(r.get("n")), _integer(r.get("step"))))
    return rows, skipped


def index_runs(runs_root: Path, db_path: Path) -> dict[str, int]:
    """Rebuild every table of `db_path` from the run folders under `runs_root`.

    Returns the row count of each table plus `skipped_lines` (unparseable JSONL lines).
    """
    runs_root, db_path = Path(runs_root), Path(db_path)
    rows, skipped = _collect(runs_root)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute("BEGIN TRANSACTION")
        for table, columns in SCHEMA.items():
            ddl = ", ".join(f"{name} {kind}" for name, kind in columns)
            con.execute(f"CREATE OR REPLACE TABLE {table} ({ddl})")
            if rows[table]:
                frame = pd.DataFrame.from_records(rows[table], columns=[c for c, _ in columns])
                con.register("_frame", frame)
                con.execute(f"INSERT INTO {table} SELECT * FROM _frame")
                con.unregister("_frame")
        counts = {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in SCHEMA}
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return {**counts, "skipped_lines": skipped}


def query(db_path: Path, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    """Run `sql` (with optional `?` parameters) against the database, read-only."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no run database at {db_path}; run `lmpipe index` first")
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(sql, params or []).df()
