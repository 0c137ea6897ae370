"""Benchmark: what the Prefect flow costs on top of DVC when there is nothing to do.

Builds the default experiment at bench/pipeline.py's `--tiny` scale in a temporary DVC workspace
(or takes `--workdir`, an already reproduced one), then times, alternating, `dvc repro` (DVC's own
no-op: every stage up to date) and `python flows/pipeline.py` (the Prefect flow's command line) on
that up-to-date workspace, whole processes, and prints each median, range and the overhead.
Requirement (issue 16): the flow within 2 s of the DVC no-op.

    .venv/bin/python bench/flow_overhead.py [--pairs 3] [--workdir DIR]
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
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from pipeline import TINY, params_for, run_once  # noqa: E402


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    if "Running stage" in result.stdout:
        raise SystemExit(f"{command} ran a stage: the workspace is not up to date")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="an up-to-date workspace (default: build one)")
    args = parser.parse_args()
    work = args.workdir
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="lmpipe-flow-"))
        base = yaml.safe_load((ROOT / "params.yaml").read_text())
        run_once(work, params_for(base, TINY, None), "tiny workspace")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", PREFECT_HOME=str(work / ".prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    commands = {"dvc repro": [str(bin_dir / "dvc"), "repro"],
                "flows/pipeline.py": [sys.executable, str(work / "flows" / "pipeline.py"),
                                      "--workdir", str(work)]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.pairs):
        for name, command in commands.items():
            times[name].append(timed(command, work, env))
    for name, values in times.items():
        print(f"{name:>18}: median {statistics.median(values):.2f} s "
              f"(range {min(values):.2f}-{max(values):.2f}, {len(values)} runs)")
    overhead = statistics.median(times["flows/pipeline.py"]) - statistics.median(times["dvc repro"])
    print(f"{'flow overhead':>18}: {overhead:+.2f} s (requirement <= 2 s: "
          f"{'PASS' if overhead <= 2 else 'FAIL'})")


if __name__ == "__main__":
    main()
