"""Benchmark: a cold `dvc repro` with every stage in a fresh process against the warm stage server.

Runs the same experiment (default: bench/pipeline.py's `--tiny` configuration, the size the
tests' pipelines run at) in fresh workspaces, alternating plain `dvc repro` (each stage imports
torch and transformers itself) and `python -m lmpipe.core.warm_server -- dvc repro` (`make run`'s
way: imported once, a forked child a stage), `--pairs` times, and prints each run's per-stage
seconds, the median ratio fresh / warm with its range, and whether the two ways' eval figures are
identical (they must be: the server runs what a fresh process runs).

    .venv/bin/python bench/warm_stages.py [--pairs 2] [key=value ...]
    .venv/bin/python bench/warm_stages.py --default        # the default experiment (~8 min a run)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ROOT, TINY, params_for, run_once  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--default", action="store_true",
                        help="the default experiment instead of the tiny configuration")
    args = parser.parse_args(argv)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = params_for(base, ([] if args.default else TINY) + args.overrides, None)
    totals: dict[str, list[float]] = {"fresh": [], "warm": []}
    evals: dict[str, list[dict]] = {"fresh": [], "warm": []}
    for pair in range(args.pairs):
        for way in ("fresh", "warm"):
            work = Path(tempfile.mkdtemp(prefix=f"lmpipe-warm-bench-{way}-"))
            run = run_once(work, params, f"pair {pair + 1}, {way}",
                           fresh_processes=way == "fresh")
            totals[way].append(run["total_s"])
            evals[way].append(run["eval"])
            shutil.rmtree(work)
    ratios = [f / w for f, w in zip(totals["fresh"], totals["warm"])]
    print(f"fresh processes: {', '.join(f'{t:.1f}' for t in totals['fresh'])} s")
    print(f"warm server:     {', '.join(f'{t:.1f}' for t in totals['warm'])} s")
    print(f"fresh / warm: {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} pairs)")
    same = all(e == evals["fresh"][0] for e in evals["fresh"] + evals["warm"])
    print("eval figures identical across every run: " + ("yes" if same else "NO"))
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
