"""Benchmark: how long `python -m stages.validate` takes in a fresh process, and what it imports.

Each case writes a params.yaml (the repo's, with one change) into a temporary project folder and
runs the stage there `--repeats` times; it prints the median and the spread of the wall time, the
exit status, and whether torch / transformers / numpy were imported (a second run through a `-c`
script that calls the stage's main and lists sys.modules). Requirement (issue #14): under 2 s,
without torch or transformers.

usage: .venv/bin/python bench/validate_params.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "numpy")
CASES = {  # name -> changes to the repo's params.yaml (dotted keys)
    "params.yaml": {},
    "harness_tasks: [hellaswag]": {"eval.harness_tasks": ["hellaswag"]},
    "harness_tasks: [hellaswagg] (unknown: every lm-eval file read)": {
        "eval.harness_tasks": ["hellaswagg"]},
    "world.people: 5000 (refused)": {"world.people": 5000},
}
PROBE = ("import sys\nfrom stages.validate import validate\ntry:\n    validate()\n"
         "except SystemExit:\n    pass\n"
         f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')")


def write_params(folder: Path, changes: dict) -> None:
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(tree))


def run(folder: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True,
                            text=True)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    baseline = statistics.median(run(ROOT, ["-c", "pass"])[0] for _ in range(args.repeats))
    print(f"python -c pass: {baseline:.3f} s (interpreter start, for reference)")
    print(f"{'case':<64} {'median s':>8} {'min-max s':>11} {'exit':>4}  heavy imports")
    for name, changes in CASES.items():
        with tempfile.TemporaryDirectory(prefix="lmpipe-bench-validate-") as tmp:
            folder = Path(tmp)
            write_params(folder, changes)
            times, code = [], None
            for _ in range(args.repeats):
                seconds, result = run(folder, ["-m", "stages.validate"])
                times.append(seconds)
                code = result.returncode
            heavy = run(folder, ["-c", PROBE])[1].stdout.strip().splitlines()[-1]
        print(f"{name:<64} {statistics.median(times):>8.3f} {min(times):>5.2f}-{max(times):<5.2f}"
              f" {code:>4}  {heavy}")


if __name__ == "__main__":
    main()
