"""The sweep as a Prefect flow: every grid point a task, run `jobs` at a time, then index and report.

Each point is a Prefect task that runs the point's DVC experiment (lmpipe/sweep/dvc_exp.py) with the
grid's retries; a point that still fails is recorded as failed in the manifest and the others go on.
When all are done the flow indexes `runs/` into the DuckDB store, renders the reports and leaves two
Prefect artifacts: a link to the report index and the sweep table.

The task runner decides where points run: threads on this machine (default), or Dask — a local
cluster (`runner="dask"`) or an existing scheduler (`dask_address="tcp://host:8786"`), whose workers
must see the project directory and its DVC cache (a shared filesystem). The flow is also a
deployment (flows/prefect.yaml) for a Prefect work pool.
The store and the reports are imported only when the flow reaches them (inside the functions).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from lmpipe.core.paths import REPORTS, RUNS, STORE
from lmpipe.core.warm_server import stage_server
from lmpipe.sweep.dvc_exp import pipeline_visible, run_point, sweep_dir
from lmpipe.sweep.grid import Grid, Point, load_grid


@task(task_run_name="{point.name}", cache_policy=NO_CACHE, retry_delay_seconds=2)
def sweep_point(project: str, grid: Grid, point: Point, threads: int) -> dict[str, Any]:
    from prefect.runtime import task_run

    attempt = task_run.run_count or 1
    get_run_logger().info("%s: %s (attempt %d)", point.name, point.label(), attempt)
    return run_point(project, grid, point, attempt=attempt, threads=threads)


def pending_records(grid: Grid) -> dict[str, dict[str, Any]]:
    """Every point's manifest record before it runs: its replicate group and seed (a grid with
    `seeds`; else the point itself and null) with its params."""
    return {p.name: {"point": p.name, "group": p.group_id, "seed": p.seed,
                     "params": p.overrides, "status": "pending",
                     "exp": None, "attempts": 0, "wall_time_s": None, "error": None}
            for p in grid.points}


def write_manifest(project: Path, grid: Grid, records: dict[str, dict[str, Any]]) -> Path:
    """runs/sweeps/<id>/sweep.json: the grid (its axes, and `seeds`/`seed_keys` when it repeats
    points) and every point's latest status, replicate group and seed."""
    path = sweep_dir(project, grid) / "sweep.json"
    created = None
    if path.is_file():
        try:
            created = json.loads(path.read_text()).get("created_at")
        except ValueError:
            pass
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {"sweep": grid.sweep_id, "name": grid.name, "grid": str(grid.source),
                "flow_pid": os.getpid(),
                "pipeline": str(grid.pipeline), "params_file": str(grid.params),
                "created_at": created or now, "updated_at": now, "axes": grid.axes,
                "points": [records[p.name] for p in grid.points]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".sweep.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _index_and_report(project: Path) -> Path:
    from lmpipe.report.render import render_report
    from lmpipe.store.index import index_runs

    index_runs(project / RUNS, project / STORE)
    return render_report(project / STORE, project / REPORTS)


def _artifacts(grid: Grid, records: dict[str, dict[str, Any]], report: Path | None) -> None:
    from prefect.artifacts import create_link_artifact, create_table_artifact

    key = "".join(c if c.isalnum() else "-" for c in grid.name.lower())
    if report is not None:
        create_link_artifact(key=f"{key}-report", link=report.resolve().as_uri(),
                             link_text=f"lmpipe reports for sweep {grid.sweep_id}")
    create_table_artifact(key=f"{key}-points", description=f"sweep {grid.sweep_id}", table=[
        {"point": r["point"], **({"group": r.get("group")} if grid.seeds else {}),
         **{k: str(v) for k, v in r["params"].items()},
         "status": r["status"], "cached": r.get("cached"), "wall_time_s": r.get("wall_time_s"),
         "exp": r.get("exp")} for r in records.values()])


@flow(name="lmpipe-sweep", log_prints=True)
def sweep(grid_path: str, project: str = ".", jobs: int | None = None, report: bool = True,
          overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every point of the grid; return counts, the manifest and the report paths."""
    logger = get_run_logger()
    root = Path(project).resolve()
    grid = load_grid(root / grid_path, root, overrides)  # an absolute grid_path stays itself
    jobs = jobs or grid.jobs
    records = pending_records(grid)
    manifest = write_manifest(root, grid, records)
    logger.info("sweep %s: %d points, %d at a time, %d retries", grid.sweep_id,
                len(grid.points), jobs, grid.retries)
    run = sweep_point.with_options(retries=grid.retries)
    # the points' stages fork from one warm interpreter (torch and transformers imported once)
    # first_alone: the others then restore the shared upstream stages from DVC's run cache
    waves = ([grid.points[:1], grid.points[1:]] if grid.first_alone and jobs > 1
             else [grid.points])
    waves = [wave for wave in waves if wave]  # a one-point grid has no second wave
    with pipeline_visible(root, grid.pipeline, grid.sweep_id), stage_server():
        for wave in waves:
            # a point alone has every core: the shared teacher and its cache are most of its time
            width = max(1, (os.cpu_count() or 1) // min(jobs, len(wave)))
            futures = {run.submit(str(root), grid, p, width): p for p in wave}
            for future in as_completed(list(futures)):
                point = futures[future]
                outcome = future.result(raise_on_failure=False)  # the record, or the exception
                if isinstance(outcome, dict):
                    records[point.name] |= outcome
                else:
                    folder = sweep_dir(root, grid) / point.name / "point.json"
                    last = json.loads(folder.read_text()) if folder.is_file() else {}
                    records[point.name] |= {**last, "status": "failed",
                                            "error": last.get("error") or str(outcome)}
                    logger.warning("%s failed: %s", point.name, records[point.name]["error"])
                write_manifest(root, grid, records)
    failed = [r["point"] for r in records.values() if r["status"] != "completed"]
    index = _index_and_report(root) if report else None
    _artifacts(grid, records, index)
    return {"sweep": grid.sweep_id, "points": len(grid.points), "failed": failed,
            "cached": [r["point"] for r in records.values() if r.get("cached")],
            "manifest": str(manifest), "report": str(index) if index else None,
            "runner": type(FlowRunContext.get().task_runner).__name__}


def task_runner(runner: str, jobs: int, dask_address: str | None = None):
    """Threads on this machine, or Dask: a local cluster of `jobs` workers or a running scheduler."""
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=jobs)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        import dask

        # A local cluster's workers start with this process's environment: dask's defaults add
        # numpy thread counts and a fixed PYTHONHASHSEED, which the warm stage server cannot
        # honour in a forked stage, so the points' stages would start fresh processes instead of
        # forking from the sweep's server. point_env sets each point's thread counts itself.
        dask.config.set({"distributed.nanny.pre-spawn-environ":
                         {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "random")}})
        return DaskTaskRunner(cluster_kwargs={"n_workers": jobs, "threads_per_worker": 1,
                                              "dashboard_address": None})
    raise ValueError(f"runner: expected 'threads' or 'dask', got {runner!r}")


def run_sweep(grid_path: str | Path, project: str | Path = ".", jobs: int | None = None,
              runner: str = "threads", dask_address: str | None = None,
              report: bool = True, overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate the grid, then run the flow with the chosen task runner."""
    root = Path(project).resolve()
    grid = load_grid(grid_path, root, overrides)  # refuse a bad grid before Prefect starts
    jobs = jobs or grid.jobs
    flow_ = sweep.with_options(task_runner=task_runner(runner, jobs, dask_address))
    return flow_(str(Path(grid_path).resolve()), str(root), jobs, report, overrides)
