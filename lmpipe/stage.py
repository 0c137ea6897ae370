"""What every stage entry shares: load validated params, and turn bad input into a clear exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from lmpipe.core.allocator import keep_freed_memory
from lmpipe.core.paths import PARAMS
from lmpipe.core.section import ConfigError
from lmpipe.data.sources import SourceError
from lmpipe.params.config import Params, load_params

StageBody = Callable[[Params, list[str]], None]
StageMain = Callable[[], None]


def fail(name: str, exc: BaseException) -> None:
    """Print `exc` as `lmpipe <name>: error: ...`, one line per problem, and exit 2."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"lmpipe {name}: error: {line.strip()}", file=sys.stderr)
    sys.exit(2)


def stage(fn: StageBody | None = None, *, environment: bool = False,
          distributed: bool = False) -> StageMain | Callable[[StageBody], StageMain]:
    """Wrap a stage body: params.yaml is validated whole before it runs; input errors exit 2, a
    diverged training run exits 3.

    Command-line arguments of the form `key.sub=value` override params.yaml (defaults, then the
    file, then the command line); the others are passed on to the stage. `@stage(environment=True)`
    also checks what the file asks of this machine (`validate_params`). Only a
    `@stage(distributed=True)` body runs under torchrun: the others would write the same outputs
    from every process at once, so they refuse to start there.
    """
    if fn is None:
        return functools.partial(stage, environment=environment, distributed=distributed)

    @functools.wraps(fn)
    def main() -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not distributed:
            fail(fn.__name__, ConfigError(
                f"the {fn.__name__} stage runs in one process, but torchrun started {world} "
                "(WORLD_SIZE); expected LMPIPE_TORCHRUN_STAGES to name only train or distill"))
        overrides = [a for a in sys.argv[1:] if "=" in a]
        rest = [a for a in sys.argv[1:] if "=" not in a]
        try:
            keep_freed_memory()  # no page faults for memory a step frees (lmpipe/core/allocator.py)
            fn(load_params(PARAMS, overrides, environment=environment), rest)
        except (ConfigError, FileNotFoundError, SourceError) as exc:
            fail(fn.__name__, exc)
        except RuntimeError as exc:
            # lmpipe.train.divergence.Diverged (not imported here: it would pull in torch before
            # validation)
            if getattr(exc, "status", None) != "diverged":
                raise
            print(f"lmpipe {fn.__name__}: {exc}", file=sys.stderr)
            sys.exit(3)

    return main
