"""Did this run reproduce the committed one? `make run` prints the answer after `dvc repro`.

The committed `dvc.lock` records the md5 of every output of the run it came from. Most of them
change on every run whatever the figures: a run folder holds its timings, and DuckDB writes a
random identifier into `people.duckdb`. `metrics/eval.json` holds the eval figures and nothing
else, so its md5 equals the committed one exactly when every figure does, to the last digit.
This compares the workspace's file with the md5 that HEAD's `dvc.lock` records for it (DVC's md5
of a file is the md5 of its bytes), and says which of params.yaml, dvc.yaml and the code differ
from HEAD when the figures do.

    python -m lmpipe.core.reproduction      # in the project folder
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

METRICS = "metrics/eval.json"
# what a run's figures are a function of, besides the data the pipeline generates from them
INPUTS = ("params.yaml", "dvc.yaml", "lmpipe", "stages")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def committed_md5(root: Path, path: str = METRICS) -> str | None:
    """The md5 HEAD's dvc.lock records for the output `path`; None without git, a commit, a
    committed dvc.lock or that output in it."""
    try:
        shown = _git(root, "show", "HEAD:dvc.lock")
    except OSError:  # no git on this machine
        return None
    if shown.returncode != 0:
        return None
    lock = yaml.safe_load(shown.stdout) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path:
                return out.get("md5")
    return None


def changed_inputs(root: Path) -> list[str]:
    """Which of params.yaml, dvc.yaml, lmpipe/ and stages/ differ from HEAD (git status)."""
    status = _git(root, "status", "--porcelain", "--", *INPUTS)
    changed = {line[3:].split("/")[0] for line in status.stdout.splitlines() if line.strip()}
    return [name for name in INPUTS if name in changed]


def verdict(root: Path) -> str:
    """One line: whether the workspace's eval figures are the committed run's."""
    expected = committed_md5(root)
    if expected is None:
        return (f"reproduction: no committed run to compare with (no git commit whose dvc.lock "
                f"records {METRICS})")
    metrics = root / METRICS
    if not metrics.is_file():
        return f"reproduction: {METRICS} not found; run the pipeline first (make run)"
    if hashlib.md5(metrics.read_bytes()).hexdigest() == expected:
        return ("reproduction: every eval figure equals the committed run's (the md5 of "
                f"{METRICS} is the one HEAD's dvc.lock records)")
    changed = changed_inputs(root)
    why = (f"changed since HEAD: {', '.join(changed)}" if changed else
           "params.yaml and the code are HEAD's, so this machine computes differently (another "
           "CPU can round differently; compare `dvc metrics show` with the README's table)")
    return f"reproduction: the eval figures differ from the committed run's: {why}"


if __name__ == "__main__":
    print(verdict(Path.cwd()))
