"""Running one sweep point as a DVC experiment, and keeping its run logs where the store finds them.

A point runs as `dvc exp run --temp -n NAME PIPELINE -S PARAMS:key=value ...`: DVC copies the
project into a temporary workspace, so points run side by side without touching the workspace or
each other (parallel `dvc repro` in one workspace fails on DVC's lock). DVC's run cache decides
what reruns: a stage whose command, dependencies and parameters were run before is restored, not
run, so a rerun sweep skips its finished points in seconds. The experiment is committed as a git
ref; the point's run folders (their JSON/JSONL/CSV logs, not model weights, which stay in the
experiment: `dvc exp apply NAME`) are copied to `runs/sweeps/<sweep>/<point>/<run>/` beside a
`point.json` with the sweep id, the point's parameters, and its replicate `group` and `seed` (a
grid with `seeds`, lmpipe/sweep/grid.py; else the group is the point and the seed null), which the
store attaches to each run.

Recipe pipelines (`recipes/*/dvc.yaml`) are hidden from the root project by `.dvcignore`, so the
default experiment's `dvc status`, `dvc metrics show` and `dvc exp run` see only its own stages.
`pipeline_visible` un-hides the swept pipeline for as long as a sweep launches its points: DVC
snapshots the workspace into each experiment, so every point's commit carries the un-hiding line
and `dvc exp show` still reads its metrics; the line is removed when the sweep ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmpipe.sweep.grid import Grid, Point, render_value

SWEEPS = Path("runs/sweeps")
LOG_SUFFIXES = {".json", ".jsonl", ".csv"}


class PointFailed(RuntimeError):
    """A point's experiment exited non-zero; the message ends with the tail of its log."""


def sweep_dir(project: Path, grid: Grid) -> Path:
    return Path(project) / SWEEPS / grid.sweep_id


def exp_command(grid: Grid, point: Point, exp_name: str, queue: bool = False) -> list[str]:
    # points share the project's repo lock for the moments DVC sets up and saves an experiment;
    # on a loaded machine DVC's default (a few retries, then "Unable to acquire lock") failed a
    # healthy point, so a point waits its turn instead
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "exp", "run",
               "--queue" if queue else "--temp",
               "-n", exp_name, str(grid.pipeline)]
    for key, value in point.overrides.items():
        # `++`: set the key whether or not the params file spells it out (Hydra override syntax)
        command += ["-S", f"{grid.params}:++{key}={render_value(value)}"]
    return command


def _is_dvc_ignored(project: Path, path: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return repo.dvcignore.is_ignored_file(str((project / path).resolve()))


@contextmanager
def pipeline_visible(project: str | Path, pipeline: str | Path, sweep_id: str) -> Iterator[None]:
    """Within the block, `pipeline` is not hidden by the project's `.dvcignore` (a negation line,
    tagged with the sweep and process, appended and then removed; other lines are untouched, so
    two sweeps of one recipe each keep it visible while they run)."""
    project = Path(project).resolve()
    pipeline = Path(pipeline)
    pipeline = pipeline.resolve().relative_to(project) if pipeline.is_absolute() else pipeline
    ignore = project / ".dvcignore"
    if not ignore.is_file() or not _is_dvc_ignored(project, pipeline):
        yield
        return
    tag = f"# lmpipe sweep {sweep_id} (pid {os.getpid()}) un-hides its pipeline while it runs"
    lines = [tag, f"!/{pipeline.as_posix()}"]
    text = ignore.read_text(encoding="utf-8")
    ignore.write_text(text + ("" if text.endswith("\n") or not text else "\n")
                      + "\n".join(lines) + "\n", encoding="utf-8")
    try:
        yield
    finally:
        current = ignore.read_text(encoding="utf-8").splitlines(keepends=True)
        for i, line in enumerate(current):
            if line.rstrip("\n") == tag:
                del current[i:i + 2]
                break
        ignore.write_text("".join(current), encoding="utf-8")


def point_env(threads: int) -> dict[str, str]:
    """The environment of a point's stages: the venv's tools first, `threads` torch threads."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    return env


def experiment_ref(project: Path, exp_name: str) -> str:
    """The git ref DVC committed the experiment `exp_name` to."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                          cwd=project, capture_output=True, text=True, check=True).stdout.split()
    matches = [r for r in refs if r.endswith(f"/{exp_name}")]
    if not matches:
        raise PointFailed(f"experiment {exp_name} finished but no git ref refs/exps/**/{exp_name}")
    return matches[-1]


def collect_runs(project: Path, ref: str, runs_dir: str, dest: Path) -> list[str]:
    """Copy the log files of every run folder under `runs_dir` at `ref` into `dest/<run>/`."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(project), rev=ref)
    collected = []
    if not fs.isdir(runs_dir):
        return collected
    for folder in fs.ls(runs_dir, detail=True):
        if folder["type"] != "directory":
            continue
        run = Path(folder["name"]).name
        files = [f for f in fs.ls(folder["name"], detail=True)
                 if f["type"] == "file" and Path(f["name"]).suffix in LOG_SUFFIXES]
        if not files:
            continue
        (dest / run).mkdir(parents=True, exist_ok=True)
        for f in files:
            fs.get_file(f["name"], str(dest / run / Path(f["name"]).name))
        collected.append(run)
    return collected


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_point(project: str | Path, grid: Grid, point: Point, attempt: int = 1,
              threads: int = 1) -> dict[str, Any]:
    """Run one point to completion and collect its run logs; raise PointFailed if it fails.

    Returns the point's record for the sweep manifest (status, exp name, cached, wall time)."""
    project = Path(project)
    folder = sweep_dir(project, grid) / point.name
    folder.mkdir(parents=True, exist_ok=True)
    exp_name = f"{grid.sweep_id}-{point.name}-{time.strftime('%Y%m%d%H%M%S')}-a{attempt}"
    record: dict[str, Any] = {"sweep": grid.sweep_id, "point": point.name,
                              "group": point.group_id, "seed": point.seed,
                              "params": point.overrides, "exp": exp_name, "attempts": attempt,
                              "pid": os.getpid()}
    _write_json(folder / "point.json", {**record, "status": "running"})
    t0 = time.perf_counter()
    with open(folder / "dvc.log", "a", encoding="utf-8") as log:
        log.write(f"\n=== attempt {attempt}: {' '.join(exp_command(grid, point, exp_name))}\n")
        log.flush()
        result = subprocess.run(exp_command(grid, point, exp_name), cwd=project, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=point_env(threads))
        log.write(result.stdout)
    record["wall_time_s"] = round(time.perf_counter() - t0, 2)
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]  # the stage's own message
        tail = "\n".join(errors[-6:] or lines[-15:])
        _write_json(folder / "point.json", {**record, "status": "failed", "error": tail})
        raise PointFailed(f"{point.name} ({point.label()}) failed "
                          f"(exit {result.returncode}); see {folder / 'dvc.log'}:\n{tail}")
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    record["cached"] = not ran
    ref = experiment_ref(project, exp_name)
    for old in folder.iterdir():  # a rerun replaces what the last attempt collected
        if old.is_dir():
            shutil.rmtree(old)
    record["runs"] = collect_runs(project, ref, (grid.pipeline.parent / "runs").as_posix(), folder)
    record["status"] = "completed"
    _write_json(folder / "point.json", record)
    return record
