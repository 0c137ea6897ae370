"""The `lmpipe` command: run recipes and sweeps, index runs into DuckDB, render reports, query the
store or export it as Parquet, generate with a model (streaming, with the database tool).

This file is the table of commands; each command's arguments and body live beside the package it
drives (`lmpipe/<package>/commands.py`) and import what they need when they run, so
`lmpipe --help`, `lmpipe index` or `lmpipe query` do not pay seconds for torch and transformers."""

from __future__ import annotations

import argparse

from lmpipe.core.command import Command
from lmpipe.eval.commands import GENERATE, PROBE
from lmpipe.core.section import ConfigError
from lmpipe.report.commands import REPORT
from lmpipe.store.commands import EXPORT, INDEX, QUERY
from lmpipe.sweep.commands import RUN, SWEEP

COMMANDS: tuple[Command, ...] = (INDEX, REPORT, QUERY, EXPORT, GENERATE, PROBE, RUN, SWEEP)


def build_parser() -> argparse.ArgumentParser:
    """The `lmpipe` parser: one subcommand each, every argument with a help that explains it."""
    parser = argparse.ArgumentParser(prog="lmpipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do; `lmpipe COMMAND --help` explains its arguments")
    for command in COMMANDS:
        command.add_to(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ConfigError) as exc:
        parser.exit(2, f"lmpipe {args.command}: error: {exc}\n")


if __name__ == "__main__":
    main()
