"""Bench: a distillation sweep recipe (recipes/optimizers or recipes/logit-vs-hidden) end to end,
timed, and what it shows with its spread over seeds.

Clones the committed project into a temporary directory, runs `lmpipe sweep
recipes/<recipe>/grid.yaml` there (2 points at a time, as the grid says), and prints the sweep's
wall time, the figures per group of seeds and the best value of the grid's last axis for each
value of the others, read from the sweep's store by the code that draws reports/sweeps.html
(lmpipe/report/sweeps.py). `--out` keeps them as JSON, `--from` rebuilds the output from a kept
JSON, `--write-readme` writes bench/README.md's block for the recipe (between
`<!-- bench:recipe-<recipe>:start -->` and `...:end -->`). `key=value` arguments go to the sweep.

    .venv/bin/python bench/distill_recipes.py --recipe optimizers --out /tmp/optimizers.json --write-readme
    .venv/bin/python bench/distill_recipes.py --recipe logit-vs-hidden --write-readme
    .venv/bin/python bench/distill_recipes.py --recipe optimizers --project DIR   # read a finished sweep
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from in_tool_learning import machine, run_sweep
from readme_block import write_block

from lmpipe.report.source import Source
from lmpipe.report.sweeps import best_table, figure_table, sweep_figures

README = ROOT / "bench" / "README.md"


def read_sweep(project: Path, sweep_id: str) -> dict[str, Any]:
    """The sweep's axes and per-group figures from the project's store."""
    src = Source.open(project / "store" / "lmpipe.duckdb")
    try:
        points = src.sweep_points
        axes, figures = sweep_figures(src, sweep_id, points[points["sweep"] == sweep_id]
                                      .reset_index(drop=True))
    finally:
        src.close()
    return {"axes": axes, "groups": json.loads(figures.to_json(orient="records"))}


def tables(results: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every group's figures, the best of the last axis per value of the others) as text cells."""
    axes, figures = results["axes"], pd.DataFrame(results["groups"])
    return figure_table(figures, axes), best_table(figures, axes)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def readme_block(results: dict[str, Any]) -> str:
    every, best = tables(results)
    m = results["machine"]
    minutes = f"{results['elapsed_s'] / 60:.1f} min" if results.get("elapsed_s") else "not timed"
    seeds = int(pd.DataFrame(results["groups"])["n"].max())
    overrides = f", overrides {' '.join(results['overrides'])}" if results["overrides"] else ""
    head = (f"Measured with `bench/distill_recipes.py --recipe {results['recipe']}` on "
            f"{results['date']} ({m['cores']} CPU cores, {m['arch']}, Python {m['python']}; "
            f"sweep {results['sweep']}, {len(results['groups'])} groups x {seeds} seeds, "
            f"wall time {minutes}{overrides}; each figure the mean over the seeds, "
            "lowest–highest in brackets):")
    axes = results["axes"]
    per = f" per {', '.join(f'`{a}`' for a in axes[:-1])}" if len(axes) > 1 else ""
    return "\n".join([head, "", markdown(every), "",
                      (f"Best `{axes[-1]}`{per} (highest held-out tool accuracy, then lowest "
                       "val loss):"), "", markdown(best)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to the sweep")
    parser.add_argument("--recipe", required=True, choices=["optimizers", "logit-vs-hidden"])
    parser.add_argument("--project", type=Path, help="an existing project whose sweep to read")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="read a previous --out file")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite the recipe's block in bench/README.md")
    args = parser.parse_args()
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        elapsed = None
        if args.project:
            project = args.project.resolve()
            manifest = max((project / "runs/sweeps").glob(f"{args.recipe}-*/sweep.json"),
                           key=lambda path: path.stat().st_mtime)  # the latest sweep of it
            sweep_id = json.loads(manifest.read_text())["sweep"]
        else:
            project = Path(tempfile.mkdtemp(prefix=f"lmpipe-{args.recipe}-")) / "project"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
            print(f"sweep in {project}", flush=True)
            result, elapsed = run_sweep(project, args.recipe, args.overrides)
            sweep_id = result["sweep"]
            print(f"points: {result['points']}, failed: {result['failed'] or 'none'}")
        results = {"date": date.today().isoformat(), "machine": machine(), "sweep": sweep_id,
                   "recipe": args.recipe, "elapsed_s": elapsed, "overrides": args.overrides,
                   **read_sweep(project, sweep_id)}
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    every, best = tables(results)
    print(every.to_string(index=False))
    print(best.to_string(index=False))
    if results.get("elapsed_s"):
        print(f"sweep wall time: {results['elapsed_s'] / 60:.1f} min")
    if args.write_readme:
        write_block(README, f"recipe-{results['recipe']}", readme_block(results))


if __name__ == "__main__":
    main()
