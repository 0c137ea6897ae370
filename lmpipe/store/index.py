"""The run database: every run folder under a runs root, loaded incrementally into one DuckDB file.

Run folders. Walking down from `runs_root` (hidden directories skipped), a directory holding
`summary.json` or `params.json` is a run folder and is not descended into (it has `model/`,
`checkpoints/` ...). Its run id is its path relative to the root with "/" separators: `teacher`,
`sweeps/itl-3fa1/p03/teacher`. A sweep writes `sweeps/<sweep>/sweep.json` (its points: params,
status, DVC experiment, attempts, wall time, error) and collects each point's run folders under
`sweeps/<sweep>/<point>/`, beside a `point.json`; a run folder takes `sweep`, `point`,
`point_group` and `seed` from the nearest `point.json` among its ancestors below the root (null
outside a sweep; the group is the point itself and the seed null in a sweep without `seeds`).

Tables (timestamps in UTC):

    runs(run_id, stage, name, sweep, point, point_group, seed, status, started_at, ended_at,
         wall_time_s,
         peak_rss_mb, git_commit, git_dirty, host, device, lmpipe_version, torch, transformers,
         path, skipped_lines)           status "incomplete" without summary.json (crashed hard,
                                        or still running); skipped_lines: the run's unparseable
                                        metrics/evals lines
    params(run_id, key, value, value_num)   key = dotted path ("train.lr"), value = JSON text,
                                        value_num = the value when it is a number
    params_wide(run_id, "<key>", ...)   one row per run, one column per params key, typed:
                                        BIGINT / DOUBLE when every value of the key is a number,
                                        BOOLEAN when every one is a bool, else VARCHAR (strings
                                        unquoted, other values as JSON text); e.g.
                                        SELECT "world.people", ... FROM params_wide
    metrics(run_id, step, name, value)  long format: one row per numeric field per step
    evals(run_id, model, metric, split, attribute, value, n, step, turn)
                                        step: the checkpoint a training run's eval series
                                        measured (lmpipe/eval/checkpoints.py); null for the eval
                                        stage's rows; turn: a conversation's turn
                                        (conversation_accuracy, lmpipe/eval/conversations.py),
                                        null for every other row and for all turns together
    summaries(run_id, key, value, value_num)   summary.json keys beyond the fixed ones
    sweep_points(sweep, point, status, exp, attempts, wall_time_s, error, params,
                 point_group, seed, group_params, axes)
                                        every point of every sweep.json, params as JSON text;
                                        group_params: params without the sweep's seed keys;
                                        axes: the grid's keys in its file's order (cross, then
                                        zip), a JSON list (params is stored with sorted keys)
    probes, linear_probes               probe statistics and linear-probe accuracies
                                        (lmpipe/store/probes.py)

Views (lmpipe/store/spread.py): `run_groups`, `eval_spread`, `metric_spread` and `sweep_groups`
aggregate the replicates of a sweep with `seeds` (runs that differ only in their seed) as mean,
min, max and n, e.g. `SELECT point_group, model, mean, min, max, n FROM eval_spread
WHERE metric = 'tool_accuracy' AND split = 'heldout' AND attribute IS NULL AND step IS NULL`.

Incremental rule. `_ingested(run_id, signature)` remembers, for each run, the name, size, mtime
(ns) and inode of the files it was read from (params.json, summary.json, env.json, metrics.jsonl,
evals.jsonl, probes.jsonl, linear_probes.jsonl, the ancestor point.json) and its resolved path.
`index_runs` compares the folders it finds with it: a new or changed run has its rows deleted
from every table and read afresh, a run whose folder vanished is deleted, an unchanged run is not
read at all; sweep.json files (small) are read every time. `params_wide` is rebuilt when anything changed. The whole index is one
transaction, so a reader never sees a half-built database, and re-indexing an unchanged tree
writes nothing. A database written by an older lmpipe (no `_store` version, or other columns) is
dropped and rebuilt from the folders.

Unparseable JSONL lines (truncated by a crash, garbage bytes, invalid UTF-8, a non-object, a
metrics record without an integer `step`, an eval record without model/metric/value) are
skipped and counted, never fatal. `query` answers SQL against the file read-only, e.g.
`query("runs.duckdb", "SELECT run_id, min(value) FROM metrics WHERE name = 'loss' GROUP BY 1")`;
`export_parquet` writes every table as Parquet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from lmpipe.store.probes import LINEAR_PROBES_COLUMNS, PROBES_COLUMNS
from lmpipe.store.read import Rows, discover_runs, read_run, row_key, sweep_rows, walk
from lmpipe.store.spread import VIEWS

__all__ = ["SCHEMA", "discover_runs", "export_parquet", "index_runs", "query"]

log = logging.getLogger(__name__)

# Bump when a table's meaning changes without its columns changing: older files are rebuilt.
SCHEMA_VERSION = "6"

# No PRIMARY KEY on runs: DuckDB before 1.2 refuses to re-insert a key deleted earlier in the same
# transaction, which is exactly what re-reading a changed run does; discovery keeps ids unique.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR"), ("stage", "VARCHAR"), ("name", "VARCHAR"), ("sweep", "VARCHAR"),
        ("point", "VARCHAR"), ("point_group", "VARCHAR"), ("seed", "BIGINT"),
        ("status", "VARCHAR"), ("started_at", "TIMESTAMP"),
        ("ended_at", "TIMESTAMP"), ("wall_time_s", "DOUBLE"), ("peak_rss_mb", "DOUBLE"),
        ("git_commit", "VARCHAR"), ("git_dirty", "BOOLEAN"), ("host", "VARCHAR"),
        ("device", "VARCHAR"), ("lmpipe_version", "VARCHAR"), ("torch", "VARCHAR"),
        ("transformers", "VARCHAR"), ("path", "VARCHAR"), ("skipped_lines", "BIGINT"),
    ],
    "params": [("run_id", "VARCHAR"), ("key", "VARCHAR"), ("value", "VARCHAR"),
               ("value_num", "DOUBLE")],
    # run_id plus one typed column per params key, rebuilt from `params` (see _rebuild_params_wide)
    "params_wide": [("run_id", "VARCHAR")],
    "metrics": [("run_id", "VARCHAR"), ("step", "BIGINT"), ("name", "VARCHAR"),
                ("value", "DOUBLE")],
    "evals": [("run_id", "VARCHAR"), ("model", "VARCHAR"), ("metric", "VARCHAR"),
              ("split", "VARCHAR"), ("attribute", "VARCHAR"), ("value", "DOUBLE"),
              ("n", "BIGINT"), ("step", "BIGINT"), ("turn", "BIGINT")],
    "summaries": [("run_id", "VARCHAR"), ("key", "VARCHAR"), ("value", "VARCHAR"),
                  ("value_num", "DOUBLE")],
    "sweep_points": [("sweep", "VARCHAR"), ("point", "VARCHAR"), ("status", "VARCHAR"),
                     ("exp", "VARCHAR"), ("attempts", "BIGINT"), ("wall_time_s", "DOUBLE"),
                     ("error", "VARCHAR"), ("params", "VARCHAR"), ("point_group", "VARCHAR"),
                     ("seed", "BIGINT"), ("group_params", "VARCHAR"), ("axes", "VARCHAR")],
    "probes": PROBES_COLUMNS,
    "linear_probes": LINEAR_PROBES_COLUMNS,
}
# Bookkeeping, not exported: what each run was read from, and the schema version.
INTERNAL: dict[str, list[tuple[str, str]]] = {
    "_ingested": [("run_id", "VARCHAR"), ("signature", "VARCHAR")],
    "_store": [("key", "VARCHAR"), ("value", "VARCHAR")],
}
# Tables holding rows of a run, keyed by run_id (params_wide is derived, sweep_points per sweep).
RUN_TABLES = ("runs", "params", "metrics", "evals", "summaries", "probes", "linear_probes",
              "_ingested")

# --- writing ----------------------------------------------------------------------------------

def _columns(table: str) -> list[str]:
    return [name for name, _ in {**SCHEMA, **INTERNAL}[table]]


def _create(con: duckdb.DuckDBPyConnection, table: str) -> None:
    ddl = ", ".join(f"{name} {kind}" for name, kind in {**SCHEMA, **INTERNAL}[table])
    con.execute(f"CREATE TABLE {table} ({ddl})")


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> bool:
    """Create the tables, dropping a database of another schema first; True if (re)created."""
    tables = {name: {} for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
    for table, column, kind in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main'").fetchall():
        tables.setdefault(table, {})[column] = kind
    version = None
    if "_store" in tables:
        row = con.execute("SELECT value FROM _store WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else None

    def matches(table: str) -> bool:
        want = {name: kind.split()[0] for name, kind in {**SCHEMA, **INTERNAL}[table]}
        have = tables.get(table, {})
        # params_wide carries one column per key beyond run_id
        return all(have.get(name) == kind for name, kind in want.items()) and (
            table == "params_wide" or len(have) == len(want))

    if version == SCHEMA_VERSION and all(matches(t) for t in {**SCHEMA, **INTERNAL}):
        return False
    if tables:
        log.info("store schema changed (version %s -> %s): rebuilding", version, SCHEMA_VERSION)
    for view in VIEWS:
        con.execute(f"DROP VIEW IF EXISTS {view}")
    for table in {**SCHEMA, **INTERNAL}:
        con.execute(f"DROP TABLE IF EXISTS {table}")
        _create(con, table)
    con.execute("INSERT INTO _store VALUES ('schema_version', ?)", [SCHEMA_VERSION])
    return True


def _ensure_views(con: duckdb.DuckDBPyConnection) -> bool:
    """Create the replicate views (lmpipe/store/spread.py) that are missing; True if any was."""
    have = {name for (name,) in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
    ).fetchall()}
    for view, sql in VIEWS.items():
        if view not in have:
            con.execute(f"CREATE VIEW {view} AS {sql()}")
    return bool(set(VIEWS) - have)


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    columns = ", ".join(_columns(table))
    con.register("_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _frame")
    finally:
        con.unregister("_frame")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rebuild_params_wide(con: duckdb.DuckDBPyConnection) -> None:
    """params_wide from params: one typed column per key (see the module docstring).

    PIVOT groups once by run and key; a column-per-key CASE/FILTER aggregate was 30x slower."""
    kinds = con.execute("""
        SELECT key,
               CASE WHEN count(*) FILTER (WHERE value <> 'null') = 0 THEN 'VARCHAR'
                    WHEN bool_and(value IN ('true', 'false')) FILTER (WHERE value <> 'null')
                         THEN 'BOOLEAN'
                    WHEN bool_and(value_num IS NOT NULL AND regexp_full_match(value, '-?[0-9]+')
                                  AND abs(value_num) < 9.2e18) FILTER (WHERE value <> 'null')
                         THEN 'BIGINT'
                    WHEN bool_and(value_num IS NOT NULL) FILTER (WHERE value <> 'null')
                         THEN 'DOUBLE'
                    ELSE 'VARCHAR' END
        FROM params GROUP BY key ORDER BY key""").fetchall()
    columns, taken = [], {"run_id"}
    for key, kind in kinds:
        if not key or key.lower() in taken:  # DuckDB column names ignore case
            log.warning("params_wide: no column for params key %r (clashes with another)", key)
            continue
        taken.add(key.lower())
        columns.append((key, kind))
    con.execute("DROP TABLE IF EXISTS params_wide")
    if not columns:
        con.execute("CREATE TABLE params_wide AS SELECT run_id FROM runs ORDER BY run_id")
        return
    pivot_in = ", ".join(f"{_quote_literal(key)} AS {_quote_ident(key)}" for key, _ in columns)
    typed = ", ".join(f"CAST(w.{_quote_ident(key)} AS {kind}) AS {_quote_ident(key)}"
                      for key, kind in columns)
    # text: strings unquoted, JSON null as NULL, anything else (numbers, lists) as its JSON text
    con.execute(f"""
        CREATE TABLE params_wide AS
        WITH text AS (
            SELECT run_id, key,
                   CASE WHEN value = 'null' THEN NULL
                        WHEN value LIKE '"%' THEN json_extract_string(value, '$')
                        ELSE value END AS text
            FROM params
        ), wide AS (
            PIVOT text ON key IN ({pivot_in}) USING any_value(text) GROUP BY run_id
        )
        SELECT r.run_id, {typed} FROM runs r LEFT JOIN wide w USING (run_id) ORDER BY r.run_id""")


def _replace_sweep_points(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> bool:
    """Write the sweep points if they differ from the stored ones; True if they did."""
    stored = con.execute("SELECT * FROM sweep_points").fetchall()
    if sorted(stored, key=row_key) == rows:
        return False
    con.execute("DELETE FROM sweep_points")
    _insert(con, "sweep_points", pd.DataFrame.from_records(rows, columns=_columns("sweep_points")))
    return True


def index_runs(runs_root: Path, db_path: Path) -> dict[str, int]:
    """Bring `db_path` up to date with the run folders under `runs_root`, incrementally.

    Returns the row count of each table, `skipped_lines` (unparseable JSONL lines of all indexed
    runs), and what this call did: `read_runs` (new or changed runs read), `deleted_runs`
    (folders gone), `unchanged_runs` (not read).
    """
    runs_root, db_path = Path(runs_root), Path(db_path)
    found = walk(runs_root)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute("BEGIN TRANSACTION")
        rebuilt = _ensure_schema(con)
        rebuilt = _ensure_views(con) or rebuilt
        known = dict(con.execute("SELECT run_id, signature FROM _ingested").fetchall())
        current = {r.run_id for r in found.runs}
        changed = [r for r in found.runs if known.get(r.run_id) != r.signature]
        stale = sorted({r.run_id for r in changed if r.run_id in known} | (known.keys() - current))
        if stale:
            con.register("_stale", pd.DataFrame({"run_id": stale}))
            for table in RUN_TABLES:
                con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM _stale)")
            con.unregister("_stale")

        rows, points = Rows(), {}
        for run in changed:
            read_run(run, rows, points)
        for table, records in rows.tables.items():
            _insert(con, table, pd.DataFrame.from_records(records, columns=_columns(table)))
        if rows.metric_values:
            _insert(con, "metrics", rows.metrics_frame())
        _insert(con, "_ingested", pd.DataFrame({"run_id": [r.run_id for r in changed],
                                                "signature": [r.signature for r in changed]}))
        sweeps_changed = _replace_sweep_points(con, sweep_rows(found.sweep_files))
        if changed or stale or rebuilt:
            _rebuild_params_wide(con)

        counts = {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in SCHEMA}
        counts["skipped_lines"] = int(con.execute(
            "SELECT coalesce(sum(skipped_lines), 0) FROM runs").fetchone()[0])
        # nothing changed: roll back so the file is not touched at all
        con.execute("COMMIT" if changed or stale or rebuilt or sweeps_changed else "ROLLBACK")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    deleted = len(known.keys() - current)
    return {**counts, "read_runs": len(changed), "deleted_runs": deleted,
            "unchanged_runs": len(found.runs) - len(changed)}


def query(db_path: Path, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    """Run `sql` (with optional `?` parameters) against the database, read-only."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no run database at {db_path}; run `lmpipe index` first")
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(sql, params or []).df()


def export_parquet(db_path: Path, out_dir: Path) -> dict[str, tuple[Path, int]]:
    """Write every table of the store as `out_dir/<table>.parquet`; return {table: (path, rows)}.

    Each file is written beside its final name and renamed, so a reader never sees half a file.
    """
    db_path, out_dir = Path(db_path), Path(out_dir)
    if not db_path.is_file():
        raise FileNotFoundError(f"no run database at {db_path}; run `lmpipe index` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    with duckdb.connect(str(db_path), read_only=True) as con:
        for table in SCHEMA:
            path = out_dir / f"{table}.parquet"
            tmp = out_dir / f".{table}.parquet.tmp"
            con.execute(f"COPY {table} TO {_quote_literal(str(tmp))} (FORMAT parquet)")
            tmp.replace(path)
            written[table] = (path, con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    return written
