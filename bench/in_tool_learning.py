"""Bench: the flagship sweep (recipes/in-tool-learning) end to end, timed, and what it shows.

Clones the committed project into a temporary directory, runs `lmpipe sweep
recipes/in-tool-learning/grid.yaml` there (18 DVC experiments, 2 at a time), and prints the wall
time against the 30-minute budget, then recall without the tool and accuracy with it for every
(model size, people) point, from the sweep's DuckDB store.

    .venv/bin/python bench/in_tool_learning.py                 # ~20 minutes on 2 cores
    .venv/bin/python bench/in_tool_learning.py --project DIR   # only read an existing sweep's store
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 30 * 60

TABLE_SQL = """
WITH point_runs AS (
    SELECT r.run_id, r.point,
           max(CASE WHEN p.key = 'teacher.model.d_model' THEN p.value_num END) AS d_model,
           max(CASE WHEN p.key = 'world.people' THEN p.value_num END) AS people,
           bool_or(p.key = 'world.tool_dialogs' AND p.value = 'true') AS tool
    FROM runs r JOIN params p USING (run_id)
    WHERE r.sweep = ? AND r.stage = 'eval'
    GROUP BY ALL
)
SELECT pr.point, pr.d_model::INT AS d_model, pr.people::INT AS people,
       CASE WHEN pr.tool THEN 'tool' ELSE 'no tool' END AS mode,
       max(CASE WHEN e.metric = 'parameters' THEN e.value END)::INT AS parameters,
       max(CASE WHEN e.metric = 'recall' AND e.split = 'trained' THEN e.value END) AS recall,
       max(CASE WHEN e.metric = 'tool_accuracy' AND e.split = 'trained' THEN e.value END) AS tool_acc,
       max(CASE WHEN e.metric = 'knowledge_bits' THEN e.value END) AS knowledge_bits
FROM point_runs pr JOIN evals e USING (run_id)
WHERE e.attribute IS NULL
GROUP BY ALL ORDER BY mode, d_model, people
"""


def run_sweep(project: Path) -> tuple[dict, float]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(project.parent / "prefect")}
    t0 = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).parent / "lmpipe"), "sweep",
                             "recipes/in-tool-learning/grid.yaml", "--json"], cwd=project, env=env,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if not result.stdout.strip():
        raise SystemExit(f"sweep failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="an existing project whose sweep to read")
    args = parser.parse_args()
    if args.project:
        project = args.project.resolve()
        manifest = sorted((project / "runs/sweeps").glob("in-tool-learning-*/sweep.json"))[-1]
        sweep_id, elapsed = json.loads(manifest.read_text())["sweep"], None
    else:
        project = Path(tempfile.mkdtemp(prefix="lmpipe-itl-")) / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
        result, elapsed = run_sweep(project)
        sweep_id = result["sweep"]
        print(f"points: {result['points']}, failed: {result['failed'] or 'none'}")
    with duckdb.connect(str(project / "store/lmpipe.duckdb"), read_only=True) as con:
        table = con.execute(TABLE_SQL, [sweep_id]).df()
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if elapsed is not None:
        verdict = "PASS" if elapsed <= BUDGET_S else "FAIL"
        print(f"sweep wall time: {elapsed / 60:.1f} min (budget 30 min) {verdict}")
    for mode, metric in (("no tool", "recall"), ("tool", "tool_acc")):
        rows = table[table["mode"] == mode].groupby("people")[metric].mean()
        print(f"{mode:>7}: mean {metric} by people: "
              + ", ".join(f"{int(n)}: {v:.3f}" for n, v in rows.items()))


if __name__ == "__main__":
    main()
