"""The `lmpipe` command: index runs into DuckDB, render reports, query the store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmpipe.paths import REPORTS, RUNS, STORE


def _index(args: argparse.Namespace) -> None:
    from lmpipe.store import index_runs

    counts = index_runs(Path(args.runs), Path(args.db))
    print(f"indexed into {args.db}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if counts.get("skipped_lines"):
        print(f"warning: {counts['skipped_lines']} unreadable log lines were skipped", file=sys.stderr)


def _report(args: argparse.Namespace) -> None:
    from lmpipe.report import render_report

    print(render_report(Path(args.db), Path(args.out)))


def _query(args: argparse.Namespace) -> None:
    import pandas as pd

    from lmpipe.store import query

    with pd.option_context("display.max_rows", args.max_rows, "display.width", 200):
        print(query(Path(args.db), args.sql).to_string(index=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="load every run folder into the DuckDB store")
    p.add_argument("--runs", default=str(RUNS))
    p.add_argument("--db", default=str(STORE))
    p.set_defaults(func=_index)
    p = sub.add_parser("report", help="render the self-contained HTML report from the store")
    p.add_argument("--db", default=str(STORE))
    p.add_argument("--out", default=str(REPORTS))
    p.set_defaults(func=_report)
    p = sub.add_parser("query", help="run read-only SQL on the store and print the result")
    p.add_argument("sql")
    p.add_argument("--db", default=str(STORE))
    p.add_argument("--max-rows", type=int, default=100)
    p.set_defaults(func=_query)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except FileNotFoundError as exc:
        parser.exit(2, f"lmpipe {args.command}: error: {exc}\n")


if __name__ == "__main__":
    main()
