"""Progress bars for long work (training, distillation, quantization, the teacher cache, eval),
readable in a terminal and in a log.

In a terminal, `progress` is a plain tqdm bar. When stderr is not a terminal (DVC under Prefect,
CI, `make run > log`), tqdm's bar would be one growing line of carriage returns, or (with
tqdm's default for non-terminals) nothing at all for minutes; there it prints a whole line at
every tenth of the work instead, with the same fields (step, rate, postfix such as loss and
tokens/s): about a dozen lines per run.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable

from tqdm import tqdm

LOG_LINES = 10             # lines per run when not in a terminal (plus the first and the last)
UNKNOWN_INTERVAL_S = 30.0  # ... or, for work of unknown length, one line per this many seconds


class LogLines(tqdm):
    """tqdm that writes each refresh as its own line (for logs, not terminals)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        self.fp.write((msg if msg is not None else self.__str__()) + "\n")
        self.fp.flush()
        return True


def is_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", initial: int = 0, disable: bool = False,
             file: Any = None) -> tqdm:
    """A progress bar over `iterable` (or `total` units updated by hand): tqdm in a terminal,
    one line per tenth of `total` otherwise. `disable` silences it (e.g. on non-main ranks)."""
    file = file if file is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable) + initial
    if is_terminal(file) or disable:
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial,
                    mininterval=2.0, disable=disable, file=file)
    if total:  # a line every tenth of the remaining work: `miniters` counts updates, not time
        every, interval = max(1, math.ceil((total - initial) / LOG_LINES)), 0.0
    else:      # unknown length: a line every UNKNOWN_INTERVAL_S seconds
        every, interval = 1, UNKNOWN_INTERVAL_S
    return LogLines(iterable, desc=desc, total=total, unit=unit, initial=initial, file=file,
                    miniters=every, mininterval=interval, maxinterval=float("inf"), ascii=True,
                    ncols=100)
