"""Bench: the flagship sweep (recipes/in-tool-learning) end to end, timed, and what it shows with
its spread over seeds.

Clones the committed project into a temporary directory, runs `lmpipe sweep
recipes/in-tool-learning/grid.yaml` there (18 combinations x the grid's seeds, 2 points at a time),
and prints the wall time, then per (mode, model size, people) the mean and min–max over the seeds
of recall without the tool, accuracy with it, and knowledge bits (total and per parameter), from
the sweep's DuckDB store. `--out` keeps that table as JSON; `--write-readme` writes it into the
README's flagship block (between `<!-- bench:in-tool-learning:start -->` and `...:end -->`);
`--from` rebuilds the table and the block from a kept JSON without running. `key=value` arguments
go to the sweep (e.g. `seeds=1` for one replicate of each point).

    .venv/bin/python bench/in_tool_learning.py --out bench/in-tool-learning.json --write-readme
    .venv/bin/python bench/in_tool_learning.py --project DIR   # read an existing sweep's store
    .venv/bin/python bench/in_tool_learning.py --from bench/in-tool-learning.json --write-readme
    .venv/bin/python bench/in_tool_learning.py --recipe knowledge-capacity --out bench/knowledge-capacity.json
    .venv/bin/python bench/in_tool_learning.py seeds=[2] --merge bench/in-tool-learning.json \
        --out bench/in-tool-learning.json --write-readme   # add a replicate to a kept table

`--merge FILE` adds this run's points to those of a kept JSON (a point of the same combination and
seed is replaced), so a sweep stopped for time is completed by running only what it lacks; the
JSON then lists every sweep it was drawn from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import markers, write_block  # noqa: E402

READMES = (ROOT / "README.md", ROOT / "bench" / "README.md")
METRICS = ("recall", "tool_acc", "knowledge_bits", "bits_per_param")

# one row per eval run of the sweep: its replicate group, seed, axes and headline metrics
POINTS_SQL = """
WITH point_runs AS (
    SELECT r.run_id, g.point_group, g.seed,
           max(CASE WHEN p.key = 'teacher.model.d_model' THEN p.value_num END) AS d_model,
           max(CASE WHEN p.key = 'world.people' THEN p.value_num END) AS people,
           max(CASE WHEN p.key = 'teacher.train.steps' THEN p.value_num END) AS steps,
           bool_or(p.key = 'world.tool_dialogs' AND p.value = 'true') AS tool
    FROM runs r JOIN params p USING (run_id) JOIN run_groups g USING (run_id)
    WHERE r.sweep = ? AND r.stage = 'eval'
    GROUP BY ALL
)
SELECT pr.point_group, pr.seed, pr.d_model::INT AS d_model, pr.people::INT AS people,
       pr.steps::INT AS steps,
       CASE WHEN pr.tool THEN 'tool' ELSE 'no tool' END AS mode,
       max(CASE WHEN e.metric = 'parameters' THEN e.value END)::INT AS parameters,
       max(CASE WHEN e.metric = 'recall' AND e.split = 'trained' THEN e.value END) AS recall,
       max(CASE WHEN e.metric = 'tool_accuracy' AND e.split = 'trained' THEN e.value END)
           AS tool_acc,
       max(CASE WHEN e.metric = 'knowledge_bits' THEN e.value END) AS knowledge_bits,
       max(CASE WHEN e.metric = 'bits_per_param' THEN e.value END) AS bits_per_param
FROM point_runs pr JOIN evals e USING (run_id)
WHERE e.attribute IS NULL AND e.step IS NULL
GROUP BY ALL
"""


def run_sweep(project: Path, grid: str, overrides: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(project.parent / "prefect")}
    t0 = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).parent / "lmpipe"), "sweep",
                             grid, *overrides, "--json"],
                            cwd=project, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if not result.stdout.strip():
        raise SystemExit(f"sweep failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), elapsed


def sweep_bench_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every sweep bench takes: sweep overrides, --project, --out, --from,
    --merge and --write-readme."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="passed to the sweep (e.g. seeds=1)")
    parser.add_argument("--project", type=Path, help="an existing project whose sweep to read")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="read a previous --out file")
    parser.add_argument("--merge", type=Path,
                        help="add this run's figures to those of a previous --out file")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite the recipe's block wherever README.md or bench/README.md "
                             "holds it")
    return parser


def write_readmes(name: str, block: str) -> None:
    """Write `block` into block `name` of every README that holds its markers."""
    files = [f for f in READMES if markers(name)[0] in f.read_text(encoding="utf-8")]
    if not files:
        raise SystemExit(f"no README holds the block {markers(name)[0]}")
    for path in files:
        write_block(path, name, block)


def sweep_of(recipe: str, overrides: list[str], project: Path | None,
             grid: str | None = None) -> tuple[Path, str, float | None]:
    """(project, sweep id, wall time): the latest sweep named `recipe` in an existing `project`
    (not timed), else a fresh clone of the committed project that runs it now (the grid file
    `grid`, by default recipes/<recipe>/grid.yaml)."""
    if project is not None:
        project = project.resolve()
        manifest = max((project / "runs/sweeps").glob(f"{recipe}-*/sweep.json"),
                       key=lambda path: path.stat().st_mtime)
        return project, json.loads(manifest.read_text())["sweep"], None
    project = Path(tempfile.mkdtemp(prefix=f"lmpipe-{recipe}-")) / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    print(f"sweep in {project}", flush=True)
    result, elapsed = run_sweep(project, grid or f"recipes/{recipe}/grid.yaml", overrides)
    print(f"points: {result['points']}, failed: {result['failed'] or 'none'}")
    return project, result["sweep"], elapsed


def spread(points: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, d_model, people): parameters, replicates n, and mean/min/max of every metric."""
    parts = ", ".join(f"avg({m}) AS {m}, min({m}) AS {m}_min, max({m}) AS {m}_max"
                      for m in METRICS)
    with duckdb.connect() as con:
        con.register("points", points)
        return con.execute(f"""
            SELECT mode, d_model, people, steps, any_value(parameters) AS parameters,
                   count(*) AS n, {parts}
            FROM points GROUP BY mode, d_model, people, steps
            ORDER BY mode, people, d_model, steps""").df()


def cell(row: Any, metric: str, number: str) -> str:
    """mean (min–max), or the value alone with one replicate or no spread."""
    mean = getattr(row, metric)
    if mean is None or pd.isna(mean):
        return "–"
    low, high = number.format(getattr(row, f"{metric}_min")), number.format(
        getattr(row, f"{metric}_max"))
    text = number.format(mean)
    return text if row.n <= 1 or low == high else f"{text} ({low}–{high})"


def readme_block(results: dict[str, Any]) -> str:
    """The README block: the measuring line and one row per (people, size, steps)."""
    table = spread(pd.DataFrame(results["points"]))
    m = results["machine"]
    n = int(table["n"].max())
    minutes = (f"{results['elapsed_s'] / 60:.1f} minutes for {len(results['points'])} points, "
               "2 at a time; " if results.get("elapsed_s") else "")
    timed = [part for part in results.get("parts", []) if part.get("elapsed_s")]
    if results.get("parts"):
        minutes = (f"the points of {len(results['parts'])} sweeps, one per batch of seeds"
                   + "".join(f"; {part['points']} points in {part['elapsed_s'] / 60:.1f} minutes"
                             for part in timed) + ", 2 at a time; ")
    recipe = results.get("recipe", "in-tool-learning")
    command = "bench/in_tool_learning.py" + (f" --recipe {recipe}" if recipe != "in-tool-learning"
                                             else "")
    if results.get("overrides"):
        command += " " + " ".join(results["overrides"])
    lines = [f"Measured with `{command}` on {results['date']} ({m['cores']} CPU "
             f"cores, {m['arch']}, Python {m['python']}; {minutes}"
             + (f"up to {n} seeds per point (the seeds column: no tool / tool): mean and, in "
                "brackets, the lowest and highest" if n > 1 else "one seed") + "):", "",
             "| people (facts) | model | params | steps | seeds | recall, no tool "
             "| knowledge bits | bits/param | tool accuracy |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    keys = ["people", "d_model", "steps"]
    no_tool = table[table["mode"] == "no tool"].set_index(keys)
    tool = table[table["mode"] == "tool"].set_index(keys)
    for key, row in no_tool.iterrows():
        people, d_model, steps = key
        r = SimpleNamespace(**row.to_dict())
        other = SimpleNamespace(**tool.loc[key].to_dict()) if key in tool.index else None
        lines.append(
            f"| {people:,} ({people * 6:,}) | d={d_model} | {int(row['parameters']):,} "
            f"| {steps:,} | {int(row['n'])}{f' / {int(other.n)}' if other is not None else ''} "
            f"| {cell(r, 'recall', '{:.3f}')} "
            f"| {cell(r, 'knowledge_bits', '{:,.0f}')} | {cell(r, 'bits_per_param', '{:.3f}')} "
            f"| {cell(other, 'tool_acc', '{:.3f}') if other is not None else '–'} |")
    return "\n".join(lines)


POINT_KEY = ("mode", "d_model", "people", "steps", "seed")


def merge(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`kept`'s points with `new`'s added (the same combination and seed: `new` wins), and the
    list of sweeps both were drawn from, each with its points and wall time."""
    if kept.get("recipe", "in-tool-learning") != new["recipe"]:
        raise SystemExit(f"--merge: the kept table is of recipe {kept.get('recipe')!r}, "
                         f"this run of {new['recipe']!r}")
    def part(results: dict[str, Any]) -> list[dict[str, Any]]:
        return results.get("parts") or [{
            "sweep": results["sweep"], "date": results["date"], "points": len(results["points"]),
            "elapsed_s": results.get("elapsed_s"), "overrides": results.get("overrides", [])}]
    points = {tuple(p[k] for k in POINT_KEY): p for p in kept["points"]}
    points.update({tuple(p[k] for k in POINT_KEY): p for p in new["points"]})
    return {**new, "sweep": None, "elapsed_s": None, "parts": part(kept) + part(new),
            "points": list(points.values())}


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version()}


def main() -> None:
    parser = sweep_bench_parser(__doc__)
    parser.add_argument("--recipe", default="in-tool-learning",
                        help="the sweep recipe under recipes/ (default in-tool-learning)")
    args = parser.parse_args()
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        project, sweep_id, elapsed = sweep_of(args.recipe, args.overrides, args.project)
        with duckdb.connect(str(project / "store/lmpipe.duckdb"), read_only=True) as con:
            points = con.execute(POINTS_SQL, [sweep_id]).df()
        results = {"date": date.today().isoformat(), "machine": machine(), "sweep": sweep_id,
                   "recipe": args.recipe,
                   "elapsed_s": elapsed, "overrides": args.overrides,
                   "points": json.loads(points.to_json(orient="records"))}
        if args.merge:
            results = merge(json.loads(args.merge.read_text()), results)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    table = spread(pd.DataFrame(results["points"]))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if results.get("elapsed_s"):
        print(f"sweep wall time: {results['elapsed_s'] / 60:.1f} min "
              f"({len(results['points'])} points)")
    for mode, metric in (("no tool", "recall"), ("tool", "tool_acc")):
        rows = table[table["mode"] == mode].groupby("people")[metric].mean()
        print(f"{mode:>7}: mean {metric} by people: "
              + ", ".join(f"{int(n)}: {v:.3f}" for n, v in rows.items()))
    if args.write_readme:
        write_readmes(results.get("recipe", "in-tool-learning"), readme_block(results))


if __name__ == "__main__":
    main()
