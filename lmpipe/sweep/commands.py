"""`lmpipe run` and `lmpipe sweep`: a recipe as the pipeline's params, a grid as experiments."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmpipe.core.command import Command


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe params file, e.g. recipes/people-tools.yaml; it is "
                   "validated, written as params.yaml and run")
    p.add_argument("overrides", nargs="*", help="key.sub=value: set a param on top of the recipe "
                   "(e.g. world.people=500; repeatable)")
    p.add_argument("--stage", action="append", help="reproduce only up to this stage, a dvc.yaml "
                   "stage name such as distill (repeatable; default: the whole pipeline)")


def run_command(args: argparse.Namespace) -> None:
    from lmpipe.sweep.recipes import run_recipe

    raise SystemExit(run_recipe(Path(args.recipe), args.overrides, stages=args.stage))


RUN = Command(
    "run",
    "make a recipe the params.yaml and run the pipeline (dvc repro)",
    arguments=_run_arguments, run=run_command)


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="the grid file listing the values to cross, e.g. grid.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value: pin a key to one value in "
                   "every point (e.g. a tiny trial of a long sweep)")
    p.add_argument("--jobs", type=int, help="points at once (default: the grid's jobs)")
    p.add_argument("--runner", choices=["threads", "dask"], default="threads",
                   help="Prefect task runner: threads here, or a Dask cluster "
                   "(default: %(default)s)")
    p.add_argument("--dask-address", help="a running Dask scheduler (tcp://host:8786); "
                   "default with --runner dask: a local cluster of --jobs workers")
    p.add_argument("--queue", action="store_true",
                   help="only queue the points for `dvc queue start`")
    p.add_argument("--dry-run", action="store_true",
                   help="check every point and list them, run nothing")
    p.add_argument("--no-report", action="store_true",
                   help="skip indexing and reports at the end")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")


def sweep_command(args: argparse.Namespace) -> None:
    """Run (or only queue, or only check) every point of a grid as a DVC experiment."""
    import json
    import subprocess

    from lmpipe.sweep.grid import load_grid

    grid = load_grid(Path(args.grid), overrides=args.overrides)
    print(f"sweep {grid.sweep_id}: {len(grid.points)} points of {grid.pipeline}")
    for point in grid.points:
        print(f"  {point.name}: {point.label()}")
    if args.dry_run:
        return
    if args.queue:  # DVC's own queue: `dvc queue start -j N` runs them in temporary workspaces
        from lmpipe.sweep.dvc_exp import exp_command, pipeline_visible

        with pipeline_visible(Path("."), grid.pipeline, grid.sweep_id):  # queued snapshots keep it
            for point in grid.points:
                subprocess.run(exp_command(grid, point, f"{grid.sweep_id}-{point.name}",
                                           queue=True), check=True)
        print(f"queued; run them with: dvc queue start -j {args.jobs or grid.jobs}")
        return
    from lmpipe.sweep.flow import run_sweep

    result = run_sweep(Path(args.grid), Path("."), jobs=args.jobs, runner=args.runner,
                       dask_address=args.dask_address, report=not args.no_report,
                       overrides=args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"sweep {result['sweep']}: {result['points'] - len(result['failed'])} of "
              f"{result['points']} points completed ({len(result['cached'])} restored from DVC's "
              f"cache); failed: {', '.join(result['failed']) or 'none'}; "
              f"report: {result['report']}")
    if result["failed"]:
        raise SystemExit(1)


SWEEP = Command(
    "sweep",
    "run every point of a grid.yaml as a DVC experiment (Prefect flow: concurrency, retries), "
    "then index and report",
    arguments=_sweep_arguments, run=sweep_command)
