"""What every stage entry shares: load validated params, and turn bad input into a clear exit."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from lmpipe.config import ConfigError, Params, load_params
from lmpipe.paths import PARAMS
from lmpipe.sources import SourceError


def stage(fn: Callable[[Params, list[str]], None]) -> Callable[[], None]:
    """Wrap a stage body: params.yaml is validated whole before it runs; input errors exit 2.

    Command-line arguments of the form `key.sub=value` override params.yaml (defaults, then the
    file, then the command line); the others are passed on to the stage.
    """

    @functools.wraps(fn)
    def main() -> None:
        overrides = [a for a in sys.argv[1:] if "=" in a]
        rest = [a for a in sys.argv[1:] if "=" not in a]
        try:
            fn(load_params(PARAMS, overrides), rest)
        except (ConfigError, FileNotFoundError, SourceError) as exc:
            print(f"lmpipe {fn.__name__}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    return main
