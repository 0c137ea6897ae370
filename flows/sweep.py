"""Prefect entry for sweeps: run a grid.yaml's points as DVC experiments (lmpipe/sweep/flow.py).

    python flows/sweep.py recipes/in-tool-learning/grid.yaml            # threads, the grid's jobs
    python flows/sweep.py GRID --runner dask                            # a local Dask cluster
    python flows/sweep.py GRID --runner dask --dask-address tcp://host:8786
    python flows/sweep.py GRID --serve                                  # serve as a deployment

`lmpipe sweep GRID` is the same flow. For a Prefect work pool, deploy `lmpipe-sweep` from
flows/prefect.yaml; every worker must see the project checkout and its DVC cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from lmpipe.sweep.flow import run_sweep, sweep  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--project", default=str(PROJECT))
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--runner", choices=["threads", "dask"], default="threads")
    parser.add_argument("--dask-address")
    parser.add_argument("--serve", action="store_true", help="serve as a deployment instead of running")
    args = parser.parse_args()
    if args.serve:
        sweep.serve(name="lmpipe-sweep", parameters={"grid_path": args.grid, "project": args.project})
    else:
        print(json.dumps(run_sweep(args.grid, args.project, jobs=args.jobs, runner=args.runner,
                                   dask_address=args.dask_address)))
