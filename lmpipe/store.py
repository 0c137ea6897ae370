"""The run database: every run folder under a runs root, loaded incrementally into one DuckDB file.

Run folders. Walking down from `runs_root` (hidden directories skipped), a directory holding
`summary.json` or `params.json` is a run folder and is not descended into (it has `model/`,
`checkpoints/` ...). Its run id is its path relative to the root with "/" separators: `teacher`,
`sweeps/itl-3fa1/p03/teacher`. A sweep writes `sweeps/<sweep>/sweep.json` (its points: params,
status, DVC experiment, attempts, wall time, error) and collects each point's run folders under
`sweeps/<sweep>/<point>/`, beside a `point.json`; a run folder takes `sweep` and `point` from the
nearest `point.json` among its ancestors below the root (null outside a sweep).

Tables (timestamps in UTC):

    runs(run_id, stage, name, sweep, point, status, started_at, ended_at, wall_time_s,
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
    evals(run_id, model, metric, split, attribute, value, n, step)
                                        step: the checkpoint a training run's eval series
                                        measured (lmpipe/checkpoint_eval.py); null for the eval
                                        stage's rows
    summaries(run_id, key, value, value_num)   summary.json keys beyond the fixed ones
    sweep_points(sweep, point, status, exp, attempts, wall_time_s, error, params)
                                        every point of every sweep.json, params as JSON text
    probes, linear_probes               probe statistics and linear-probe accuracies
                                        (lmpipe/store_probes.py)

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

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from lmpipe.store_probes import (LINEAR_PROBES_COLUMNS, PROBES_COLUMNS, read_linear_probes,
                                 read_probes)

log = logging.getLogger(__name__)

# Bump when a table's meaning changes without its columns changing: older files are rebuilt.
SCHEMA_VERSION = "3"

# No PRIMARY KEY on runs: DuckDB before 1.2 refuses to re-insert a key deleted earlier in the same
# transaction, which is exactly what re-reading a changed run does; discovery keeps ids unique.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR"), ("stage", "VARCHAR"), ("name", "VARCHAR"), ("sweep", "VARCHAR"),
        ("point", "VARCHAR"), ("status", "VARCHAR"), ("started_at", "TIMESTAMP"),
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
              ("n", "BIGINT"), ("step", "BIGINT")],
    "summaries": [("run_id", "VARCHAR"), ("key", "VARCHAR"), ("value", "VARCHAR"),
                  ("value_num", "DOUBLE")],
    "sweep_points": [("sweep", "VARCHAR"), ("point", "VARCHAR"), ("status", "VARCHAR"),
                     ("exp", "VARCHAR"), ("attempts", "BIGINT"), ("wall_time_s", "DOUBLE"),
                     ("error", "VARCHAR"), ("params", "VARCHAR")],
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

# summary.json keys that become `runs` columns; every other key goes to `summaries`.
SUMMARY_FIXED = {"stage", "name", "status", "started_at", "ended_at", "wall_time_s", "peak_rss_mb"}
ENV_COLUMNS = ("git_commit", "git_dirty", "host", "device", "lmpipe_version", "torch",
               "transformers")
# The files a run is read from: their (name, size, mtime) make its signature.
RUN_FILES = ("params.json", "summary.json", "env.json", "metrics.jsonl", "evals.jsonl",
             "probes.jsonl", "linear_probes.jsonl")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number(x: Any) -> float | None:
    if not _is_number(x):
        return None
    try:
        return float(x)
    except OverflowError:  # an int beyond float range
        return math.copysign(math.inf, x)


def _integer(x: Any) -> int | None:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return x if type(x) is int and INT64_MIN <= x <= INT64_MAX else None


def _clean(s: str) -> str:
    """`s` as DuckDB can store it: JSON may smuggle lone surrogates in ("\\ud800"), UTF-8 cannot."""
    return s if s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


def _text(x: Any) -> str | None:
    return None if x is None else _clean(str(x))


def _json_text(value: Any) -> str:
    """json.dumps(value, sort_keys=True, default=str), with fast paths for the usual scalars
    (a run has a few hundred params; json.dumps per leaf dominated indexing)."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(_clean(value))
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is float:
        if math.isfinite(value):
            return float.__repr__(value)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, sort_keys=True, default=str)


def _timestamp(value: Any) -> datetime | None:
    """An ISO string as a naive UTC datetime (naive inputs are taken as UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
        return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts
    except (ValueError, OverflowError):  # not ISO, or a year-1 date pushed out of range by its zone
        return None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} if the file is missing or not a JSON object."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        log.warning("ignoring unreadable %s", path)
        return {}
    return obj if isinstance(obj, dict) else {}


def _lines(path: Path) -> tuple[list[str], int]:
    """The lines of `path` (blank ones included), and how many were not valid UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    try:
        return data.decode("utf-8").split("\n"), 0
    except UnicodeDecodeError:
        lines, bad = [], 0
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad += 1
        return lines, bad


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of a nested dict; lists and empty dicts are leaves."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{path}.")
        else:
            yield path, value


def _env_value(env: dict[str, Any], column: str) -> Any:
    value = env.get(column)
    if column == "git_dirty":
        return value if isinstance(value, bool) else None
    return _text(value)


# --- discovery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFolder:
    """A run folder found under the root, and what it would be read from."""

    run_id: str
    path: Path
    point_file: Path | None
    signature: str


@dataclass
class _Tree:
    runs: list[RunFolder] = field(default_factory=list)
    sweep_files: list[Path] = field(default_factory=list)


def _stat_sig(name: str, st: os.stat_result) -> str:
    # the inode too: runlog rewrites JSON files by rename, so a same-size rewrite within one
    # mtime tick still shows
    return f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _walk(runs_root: Path) -> _Tree:
    """Run folders (with their signatures) and sweep.json files under `runs_root`: stat only,
    nothing is read, so an unchanged tree costs one scandir per directory."""
    tree = _Tree()
    seen_links: set[str] = set()
    run_ids: set[str] = set()
    point_sigs: dict[Path, str] = {}

    def visit(folder: Path, rel: str, point_file: Path | None) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable or vanished meanwhile: nothing to index there
            return
        files: dict[str, os.DirEntry] = {}
        dirs: list[os.DirEntry] = []
        for entry in entries:
            try:
                if entry.is_dir():
                    if not entry.name.startswith("."):
                        dirs.append(entry)
                elif entry.is_file():
                    files[entry.name] = entry
            except OSError:
                continue
        if rel and ("summary.json" in files or "params.json" in files):
            try:
                parts = [_stat_sig(n, files[n].stat()) for n in RUN_FILES if n in files]
            except OSError:
                return
            if point_file is not None:
                parts.append(point_sigs[point_file])
            parts.append(str(folder.resolve()))  # a moved root re-reads (runs.path changes)
            run_id = _clean(rel)  # a folder name that is not UTF-8 would stop DuckDB
            if run_id in run_ids:
                log.warning("ignoring run folder %s: its id %r is taken", folder, run_id)
                return
            run_ids.add(run_id)
            tree.runs.append(RunFolder(run_id, folder, point_file, "|".join(parts)))
            return
        if "sweep.json" in files:
            tree.sweep_files.append(folder / "sweep.json")
        if rel and "point.json" in files:
            try:
                point_sigs[folder / "point.json"] = _stat_sig("point.json", files["point.json"].stat())
                point_file = folder / "point.json"
            except OSError:
                pass
        for entry in sorted(dirs, key=lambda e: e.name):
            if entry.is_symlink():  # follow links, but never around a cycle
                target = os.path.realpath(entry.path)
                if target in seen_links:
                    continue
                seen_links.add(target)
            visit(Path(entry.path), f"{rel}/{entry.name}" if rel else entry.name, point_file)

    if runs_root.is_dir():
        visit(runs_root, "", None)
    tree.runs.sort(key=lambda r: r.run_id)
    return tree


def discover_runs(runs_root: Path) -> list[Path]:
    """Run folders under `runs_root` (recursively, see the module docstring), sorted by run id."""
    return [r.path for r in _walk(Path(runs_root)).runs]


# --- reading ----------------------------------------------------------------------------------

class _Rows:
    """Rows read from changed runs, per table; metrics kept columnar (they are most of the data)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple]] = {t: [] for t in ("runs", "params", "evals", "summaries",
                                                               "probes", "linear_probes")}
        self.metric_runs: list[str] = []
        self.metric_run_rows: list[int] = []
        self.metric_line_steps: list[int] = []
        self.metric_line_rows: list[int] = []
        self.metric_names: list[str] = []
        self.metric_values: list[Any] = []

    def metrics_frame(self) -> pd.DataFrame:
        run_codes = np.repeat(np.arange(len(self.metric_runs)), self.metric_run_rows)
        names = pd.Categorical(self.metric_names)
        if not all(c.isascii() for c in names.categories):  # rare: clean each, then recode
            names = pd.Categorical([_clean(n) for n in self.metric_names])
        try:
            values = np.array(self.metric_values, dtype=np.float64)
        except OverflowError:  # an integer beyond float range somewhere
            values = np.array([_number(v) for v in self.metric_values], dtype=np.float64)
        return pd.DataFrame({
            "run_id": pd.Categorical.from_codes(run_codes, categories=self.metric_runs),
            "step": np.repeat(np.array(self.metric_line_steps, dtype=np.int64), self.metric_line_rows),
            "name": names,
            "value": values,
        })


def _read_metrics(path: Path, rows: _Rows) -> int:
    """Append the numeric fields of `path`'s records to `rows`; return the skipped line count.

    The hot loop of indexing (a million values for a thousand runs): bound methods and type
    checks only, one step and one row count per line rather than per value."""
    lines, skipped = _lines(path)
    loads = json.loads
    names_append, values_append = rows.metric_names.append, rows.metric_values.append
    steps_append, counts_append = rows.metric_line_steps.append, rows.metric_line_rows.append
    values = rows.metric_values
    first = len(values)
    for line in lines:
        if not line or line.isspace():
            continue
        try:
            record = loads(line)
        except (ValueError, RecursionError):
            skipped += 1
            continue
        if type(record) is not dict:
            skipped += 1
            continue
        step = record.get("step")
        if type(step) is not int or not INT64_MIN <= step <= INT64_MAX:
            step = _integer(step)  # 3.0 counts as step 3; a bool, string or 3.5 does not
            if step is None:
                skipped += 1
                continue
        before = len(values)
        for name, value in record.items():
            kind = type(value)
            if (kind is float or kind is int) and name != "step":
                names_append(name)
                values_append(value)
        steps_append(step)
        counts_append(len(values) - before)
    rows.metric_run_rows.append(len(values) - first)
    return skipped


def _read_evals(path: Path, run_id: str, out: list[tuple]) -> int:
    """Append `path`'s eval records to `out`; return the skipped line count."""
    lines, skipped = _lines(path)
    for line in lines:
        if not line or line.isspace():
            continue
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            skipped += 1
            continue
        if not (isinstance(r, dict) and isinstance(r.get("model"), str)
                and isinstance(r.get("metric"), str) and _is_number(r.get("value"))):
            skipped += 1
            continue
        out.append((run_id, _clean(r["model"]), _clean(r["metric"]), _text(r.get("split")),
                    _text(r.get("attribute")), _number(r["value"]), _integer(r.get("n")),
                    _integer(r.get("step"))))
    return skipped


def _read_run(run: RunFolder, rows: _Rows, points: dict[Path, dict[str, Any]]) -> None:
    folder, run_id = run.path, run.run_id
    summary = _read_json(folder / "summary.json")
    env = _read_json(folder / "env.json")
    sweep = point = None
    if run.point_file is not None:
        if run.point_file not in points:
            points[run.point_file] = _read_json(run.point_file)
        info = points[run.point_file]
        # point.json names its sweep and point; the folder names stand in for a damaged file
        point = _text(info.get("point")) or run.point_file.parent.name
        sweep = _text(info.get("sweep")) or run.point_file.parent.parent.name

    params = rows.tables["params"]
    for key, value in flatten(_read_json(folder / "params.json")):
        params.append((run_id, _clean(key), _json_text(value), _number(value)))
    for key, value in summary.items():
        if key not in SUMMARY_FIXED:
            rows.tables["summaries"].append((run_id, _clean(key), _json_text(value), _number(value)))

    rows.metric_runs.append(run_id)
    skipped = _read_metrics(folder / "metrics.jsonl", rows)
    skipped += _read_evals(folder / "evals.jsonl", run_id, rows.tables["evals"])
    skipped += read_probes(folder, run_id, rows.tables["probes"])
    skipped += read_linear_probes(folder, run_id, rows.tables["linear_probes"])

    rows.tables["runs"].append((
        run_id, _text(summary.get("stage")), _text(summary.get("name")), sweep, point,
        _text(summary.get("status")) or "incomplete",
        _timestamp(summary.get("started_at") or env.get("started_at")),
        _timestamp(summary.get("ended_at") or env.get("ended_at")),
        _number(summary.get("wall_time_s")), _number(summary.get("peak_rss_mb")),
        *(_env_value(env, col) for col in ENV_COLUMNS),
        _clean(str(folder.resolve())), skipped,
    ))


def _sweep_rows(sweep_files: list[Path]) -> list[tuple]:
    rows = []
    for path in sorted(sweep_files):
        sweep = _read_json(path)
        sweep_id = _text(sweep.get("sweep")) or path.parent.name
        points = sweep.get("points")
        for p in points if isinstance(points, list) else []:
            if not isinstance(p, dict):
                continue
            rows.append((sweep_id, _text(p.get("point")), _text(p.get("status")), _text(p.get("exp")),
                         _integer(p.get("attempts")), _number(p.get("wall_time_s")),
                         _text(p.get("error")),
                         None if p.get("params") is None else _json_text(p.get("params"))))
    return sorted(rows, key=_row_key)


def _row_key(row: tuple) -> tuple[str, ...]:
    """A total order on rows holding None (sorting tuples with None raises)."""
    return tuple("" if v is None else str(v) for v in row)


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
    for table in {**SCHEMA, **INTERNAL}:
        con.execute(f"DROP TABLE IF EXISTS {table}")  # an old file may also hold views: none known
        _create(con, table)
    con.execute("INSERT INTO _store VALUES ('schema_version', ?)", [SCHEMA_VERSION])
    return True


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
    if sorted(stored, key=_row_key) == rows:
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
    found = _walk(runs_root)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute("BEGIN TRANSACTION")
        rebuilt = _ensure_schema(con)
        known = dict(con.execute("SELECT run_id, signature FROM _ingested").fetchall())
        current = {r.run_id for r in found.runs}
        changed = [r for r in found.runs if known.get(r.run_id) != r.signature]
        stale = sorted({r.run_id for r in changed if r.run_id in known} | (known.keys() - current))
        if stale:
            con.register("_stale", pd.DataFrame({"run_id": stale}))
            for table in RUN_TABLES:
                con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM _stale)")
            con.unregister("_stale")

        rows, points = _Rows(), {}
        for run in changed:
            _read_run(run, rows, points)
        for table, records in rows.tables.items():
            _insert(con, table, pd.DataFrame.from_records(records, columns=_columns(table)))
        if rows.metric_values:
            _insert(con, "metrics", rows.metrics_frame())
        _insert(con, "_ingested", pd.DataFrame({"run_id": [r.run_id for r in changed],
                                                "signature": [r.signature for r in changed]}))
        sweeps_changed = _replace_sweep_points(con, _sweep_rows(found.sweep_files))
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
