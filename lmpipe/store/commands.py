"""`lmpipe index`, `lmpipe query`, `lmpipe export`: the store's commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmpipe.core.command import Command
from lmpipe.core.paths import RUNS, STORE

DB_HELP = "the run database (DuckDB file) written by `lmpipe index` (default: %(default)s)"


def _index_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=str(RUNS),
                   help="folder holding the run folders to index (default: %(default)s)")
    p.add_argument("--db", default=str(STORE),
                   help="the DuckDB file to create or update (default: %(default)s)")


def index_command(args: argparse.Namespace) -> None:
    from lmpipe.store.index import index_runs

    counts = index_runs(Path(args.runs), Path(args.db))
    print(f"indexed into {args.db}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if counts.get("skipped_lines"):
        print(f"warning: {counts['skipped_lines']} unreadable log lines were skipped (per run: "
              "lmpipe query \"SELECT run_id, skipped_lines FROM runs WHERE skipped_lines > 0\")",
              file=sys.stderr)


INDEX = Command(
    "index",
    "load every run folder into the DuckDB store",
    "Load every run folder into the DuckDB store, incrementally (only new or changed runs are "
    "read; deleted folders are dropped).",
    arguments=_index_arguments, run=index_command)


def _query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sql", help="one SQL statement in DuckDB's dialect, e.g. "
                   "\"SELECT run_id, stage FROM runs\" (writes are refused)")
    p.add_argument("--db", default=str(STORE), help=DB_HELP)
    p.add_argument("--max-rows", type=int, default=100,
                   help="print at most this many rows, then the total count (default: %(default)s)")


def query_command(args: argparse.Namespace) -> None:
    import duckdb
    import pandas as pd

    from lmpipe.store.index import query

    try:
        frame = query(Path(args.db), args.sql)
    except duckdb.Error as exc:  # bad SQL, or a write on the read-only connection: no traceback
        raise SystemExit(f"lmpipe query: error: {exc}") from None
    with pd.option_context("display.width", 200):
        # to_string ignores display.max_rows: pass the limit, or a million metric rows scroll by
        print(frame.to_string(index=False, max_rows=args.max_rows))
    if len(frame) > args.max_rows:
        print(f"({len(frame)} rows, {args.max_rows} shown: --max-rows N)")


QUERY = Command(
    "query",
    "run read-only SQL on the store and print the result",
    "Run read-only SQL on the store and print the result table.",
    arguments=_query_arguments, run=query_command)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=str(STORE), help=DB_HELP)
    p.add_argument("--out", default=str(STORE.parent / "parquet"),
                   help="folder the Parquet files are written to (default: %(default)s)")


def export_command(args: argparse.Namespace) -> None:
    from lmpipe.store.index import export_parquet

    for table, (path, rows) in export_parquet(Path(args.db), Path(args.out)).items():
        print(f"{path}: {rows} rows ({table})")


EXPORT = Command(
    "export",
    "write every table of the store as Parquet, one file each",
    "Write every table of the store as OUT/<table>.parquet.",
    arguments=_export_arguments, run=export_command)
