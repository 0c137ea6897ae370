"""Progress bars (lmpipe/core/progress.py): a tqdm bar in a terminal, a dozen whole lines in a
log."""

from __future__ import annotations

import io

from tqdm import tqdm

from lmpipe.core.progress import LogLines, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_whole_line_per_tenth_of_the_work_with_its_postfix():
    log = io.StringIO()
    bar = progress(range(20, 200), desc="distill student", total=200, initial=20, unit="step",
                   file=log)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
    bar.close()
    lines = [line for line in log.getvalue().split("\n") if line]
    assert "\r" not in log.getvalue()
    # the first line at step 20, then every 18 steps (a tenth of the 180 left) up to 200
    assert [int(line.split("|")[2].split("/")[0]) for line in lines] == \
        [20, 38, 56, 74, 92, 110, 128, 146, 164, 182, 200, 200]
    assert all(line.startswith("distill student:") for line in lines)
    assert "loss=0.005" in lines[-1]                      # the postfix of the last step


def test_a_terminal_gets_tqdm_s_own_bar_and_disabled_bars_print_nothing():
    bar = progress(range(5), desc="eval", file=Terminal())
    assert type(bar) is tqdm and not isinstance(bar, LogLines)
    list(bar)
    quiet = io.StringIO()
    list(progress(range(50), desc="rank 1", total=50, disable=True, file=quiet))
    assert quiet.getvalue() == ""
