"""One `lmpipe` subcommand: its help, its arguments and its body, declared beside the package
whose work it runs; `lmpipe/cli.py` is the table of them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    """`lmpipe NAME`: `summary` is the one line in `lmpipe --help`, `description` opens
    `lmpipe NAME --help` (default: the summary as a sentence). `arguments` adds the arguments to
    the subcommand's parser; `run` does the work (importing what it needs inside, so
    `lmpipe --help` never pays for torch)."""

    name: str
    summary: str
    description: str | None = None
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    run: Callable[[argparse.Namespace], None] = lambda args: None

    def add_to(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        parser = sub.add_parser(self.name, help=self.summary,
                                description=self.description
                                or self.summary[0].upper() + self.summary[1:] + ".")
        self.arguments(parser)
        parser.set_defaults(func=self.run)
        return parser
