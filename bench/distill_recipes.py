"""Bench: a distillation sweep recipe (recipes/optimizers, its SmolLM2 setting, their AdaLomo
grids, or recipes/logit-vs-hidden) end to end, timed, and what it shows with its spread over seeds.

Clones the committed project into a temporary directory, runs the recipe's grid (`GRIDS`) there
with `lmpipe sweep` (2 points at a time, as the grid says; the SmolLM2 setting gets tiny
Shakespeare from ../shared/data as an absolute `data.path`), and prints the sweep's
wall time, the figures per group of seeds and the best value of the grid's last axis for each
value of the others, read from the sweep's store by the code that draws reports/sweeps.html
(lmpipe/report/sweeps.py). `--out` keeps them as JSON, `--from` rebuilds the output from a kept
JSON, `--write-readme` writes the recipe's block (between `<!-- bench:recipe-<recipe>:start -->`
and `...:end -->`) in README.md and bench/README.md, wherever it is. `key=value` arguments go to the sweep.

    .venv/bin/python bench/distill_recipes.py --recipe optimizers --out /tmp/optimizers.json --write-readme
    .venv/bin/python bench/distill_recipes.py --recipe logit-vs-hidden --write-readme
    .venv/bin/python bench/distill_recipes.py --recipe optimizers-smollm2 --write-readme
    .venv/bin/python bench/distill_recipes.py --recipe optimizers-adalomo --write-readme
    .venv/bin/python bench/distill_recipes.py --recipe optimizers --project DIR   # read a finished sweep
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from in_tool_learning import machine, sweep_bench_parser, sweep_of, write_readmes
from train_throughput import DATA

from lmpipe.report.source import Source
from lmpipe.report.sweeps import best_table, figure_table, sweep_figures


# recipe (the sweep's name) -> its grid file
GRIDS = {"optimizers": "recipes/optimizers/grid.yaml",
         "optimizers-smollm2": "recipes/optimizers/smollm2.yaml",
         "optimizers-adalomo": "recipes/optimizers/adalomo.yaml",
         "optimizers-adalomo-smollm2": "recipes/optimizers/adalomo-smollm2.yaml",
         "logit-vs-hidden": "recipes/logit-vs-hidden/grid.yaml"}
# what a recipe needs on this machine: points run in DVC's temporary copies of the project
NEEDS = {"optimizers-smollm2": [f"data.path={DATA}"],
         "optimizers-adalomo-smollm2": [f"data.path={DATA}"]}


def read_sweep(project: Path, sweep_id: str, axes: list[str] | None = None) -> dict[str, Any]:
    """The sweep's axes (or `axes`) and per-group figures from the project's store."""
    src = Source.open(project / "store" / "lmpipe.duckdb")
    try:
        points = src.sweep_points
        axes, figures = sweep_figures(src, sweep_id, points[points["sweep"] == sweep_id]
                                      .reset_index(drop=True), axes)
    finally:
        src.close()
    return {"axes": axes, "groups": json.loads(figures.to_json(orient="records"))}


def merge(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s groups added to `kept`'s (a group with the same axis values replaced): a sweep
    pinned to some points of the grid completes a kept one."""
    def key(group: dict[str, Any]) -> str:
        return json.dumps([group[a] for a in kept["axes"]])

    groups = {key(g): g for g in kept["groups"]} | {key(g): g for g in new["groups"]}
    return {**new, "axes": kept["axes"], "groups": list(groups.values()),
            "parts": kept.get("parts", [_part(kept)]) + [_part(new)]}


def _part(results: dict[str, Any]) -> dict[str, Any]:
    return {k: results.get(k) for k in ("sweep", "date", "elapsed_s", "overrides")} | {
        "groups": len(results["groups"])}


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
    seeds = int(pd.DataFrame(results["groups"])["n"].max())

    def described(part: dict[str, Any]) -> str:
        minutes = f"{part['elapsed_s'] / 60:.1f} min" if part.get("elapsed_s") else "not timed"
        pins = f" ({' '.join(part['overrides'])})" if part.get("overrides") else ""
        return f"sweep {part['sweep']}{pins}: {part['groups']} groups in {minutes}"

    parts = results.get("parts") or [_part(results)]
    head = (f"Measured with `bench/distill_recipes.py --recipe {results['recipe']}` on "
            f"{results['date']} ({m['cores']} CPU cores, {m['arch']}, Python {m['python']}; "
            f"{'; '.join(described(p) for p in parts)}; {seeds} seeds a group, 2 points at a "
            "time; each figure the mean over the seeds, lowest–highest in brackets):")
    axes = results["axes"]
    per = f" per {', '.join(f'`{a}`' for a in axes[:-1])}" if len(axes) > 1 else ""
    return "\n".join([head, "", markdown(every), "",
                      (f"Best `{axes[-1]}`{per} (highest held-out tool accuracy, then lowest "
                       "val loss):"), "", markdown(best)])


def main() -> None:
    parser = sweep_bench_parser(__doc__)
    parser.add_argument("--recipe", required=True, choices=list(GRIDS))
    args = parser.parse_args()
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        overrides = NEEDS.get(args.recipe, []) + args.overrides
        project, sweep_id, elapsed = sweep_of(args.recipe, overrides, args.project,
                                              GRIDS[args.recipe])
        kept = json.loads(args.merge.read_text()) if args.merge else None
        results = {"date": date.today().isoformat(), "machine": machine(), "sweep": sweep_id,
                   "recipe": args.recipe, "elapsed_s": elapsed, "overrides": args.overrides,
                   **read_sweep(project, sweep_id, kept["axes"] if kept else None)}
        if kept:
            results = merge(kept, results)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    every, best = tables(results)
    print(every.to_string(index=False))
    print(best.to_string(index=False))
    if results.get("elapsed_s"):
        print(f"sweep wall time: {results['elapsed_s'] / 60:.1f} min")
    if args.write_readme:
        write_readmes(f"recipe-{results['recipe']}", readme_block(results))


if __name__ == "__main__":
    main()
