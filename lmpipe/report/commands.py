"""`lmpipe report`: render the report pages from the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmpipe.core.command import Command
from lmpipe.core.paths import REPORTS, STORE
from lmpipe.store.commands import DB_HELP


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=str(STORE), help=DB_HELP)
    p.add_argument("--out", default=str(REPORTS),
                   help="folder the HTML pages are written to (default: %(default)s)")
    p.add_argument("--color-by", help="colour curves by this param (e.g. world.people), a sweep "
                   "axis or a runs column; default: the first param a sweep varies, else the run")
    p.add_argument("--png", action="store_true",
                   help="also write every chart as a PNG file beside the pages (default: off)")


def report_command(args: argparse.Namespace) -> None:
    from lmpipe.report.render import render_report

    print(render_report(Path(args.db), Path(args.out), color_by=args.color_by, png=args.png))


REPORT = Command(
    "report",
    "render the self-contained HTML report from the store",
    "Render the self-contained HTML report pages from the store.",
    arguments=_report_arguments, run=report_command)
