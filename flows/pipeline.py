"""Prefect flow for the default experiment: every DVC stage as a task, in dependency order.

The flow asks `dvc status` once which stages changed, then runs a task for each of them and
everything downstream, in dependency order: `dvc repro --single-item <stage>`, so DVC's cache still
decides what actually reruns. Prefect adds the order, retries, logs and a markdown artifact with
the eval metrics and a link to the report. On an up-to-date workspace the command line answers
from the status alone, without starting Prefect (bench/flow_overhead.py times both). Run it with `python flows/pipeline.py`, serve it with `python flows/pipeline.py --serve`,
or deploy it from `flows/prefect.yaml` (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import lmpipe  # noqa: F401  (sets the offline and no-analytics environment defaults)

PROJECT = Path(__file__).resolve().parents[1]


def _root_stages(repo, workdir: Path) -> list:
    """The stages of `workdir/dvc.yaml` in dependency order. DVC's index holds every dvc.yaml in
    the repository, recipes' included; only the root pipeline's stages are this flow's to run."""
    import networkx as nx

    root_file = (Path(workdir) / "dvc.yaml").resolve()
    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    return [stage for stage in reversed(list(nx.topological_sort(graph)))
            if Path(stage.dvcfile.path).resolve() == root_file]


def stage_order(workdir: Path) -> list[str]:
    """The stages of `workdir/dvc.yaml` in dependency order, read through DVC itself."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        return [stage.name for stage in _root_stages(repo, workdir)]


def plan(workdir: Path) -> tuple[list[str], list[str]]:
    """(every stage in dependency order, the stages to run): the ones `dvc status` reports
    changed and everything downstream of them (an upstream rerun may change their inputs; DVC
    still skips any whose inputs come out the same). One status call instead of one `dvc repro`
    process per stage: on an up-to-date workspace the flow runs nothing."""
    import networkx as nx
    from dvc.repo import Repo

    # names, not DVC's addressing, which is relative to the current directory
    # ("../x/dvc.yaml:prepare"); `run_stage` runs each name inside `workdir`
    with Repo(str(workdir)) as repo:
        stages = _root_stages(repo, workdir)
        changed = set(repo.status(targets=[str(Path(workdir) / "dvc.yaml")]))
        graph = repo.index.graph
        todo = set()
        for stage in stages:
            if stage.addressing in changed:
                todo |= {stage} | nx.ancestors(graph, stage)
    order = [stage.name for stage in stages]
    return order, [stage.name for stage in stages if stage in todo]


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(PROJECT))
    parser.add_argument("--serve", action="store_true", help="serve as a deployment instead of running")
    parser.add_argument("--torchrun", default=None, metavar="OPTIONS",
                        help="run the train stages under torchrun with these options, e.g. "
                        "'--nproc_per_node 4' (sets LMPIPE_TORCHRUN for stages/run.sh)")
    return parser.parse_args(argv)


def stage_env(torchrun: str | None) -> dict[str, str]:
    """The environment a stage runs in: this one, and with `torchrun` the launcher options
    stages/run.sh starts the train stages with."""
    env = os.environ.copy()
    if torchrun:
        env["LMPIPE_TORCHRUN"] = torchrun
    return env


if __name__ == "__main__":
    # Nothing to orchestrate: answer from `dvc status` before importing Prefect (~3 s of imports).
    _args = _parse_args()
    if not _args.serve and not plan(Path(_args.workdir))[1]:
        print(f"lmpipe-pipeline: every stage of {Path(_args.workdir) / 'dvc.yaml'} is up to date")
        sys.exit(0)

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from lmpipe.core.warm_server import stage_server  # noqa: E402


@task(retries=2, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def run_stage(stage: str, workdir: str, torchrun: str | None = None) -> str:
    logger = get_run_logger()
    # this interpreter's DVC: `.venv/bin/python flows/pipeline.py` works without the venv on PATH
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage],
                            cwd=workdir,
                            capture_output=True, text=True, env=stage_env(torchrun))
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip() and "%|" not in line:  # keep progress bars out of the Prefect log
            logger.info(line)
    if result.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed with exit code {result.returncode}")
    return stage


def eval_markdown(metrics_path: Path, report_path: Path) -> str:
    table = json.loads(metrics_path.read_text())
    columns = sorted({k for row in table.values() for k in row})
    lines = ["# lmpipe eval", "", "| model | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for model, row in table.items():
        cells = [f"{row[c]:.4g}" if c in row else "" for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", f"Report: [{report_path}]({report_path.resolve().as_uri()})"]
    return "\n".join(lines)


@flow(name="lmpipe-pipeline", log_prints=True)
def pipeline(workdir: str = str(PROJECT), torchrun: str | None = None) -> list[str]:
    """Reproduce the stages of the DVC pipeline in `workdir` that are not up to date, in order,
    then publish the eval summary; returns the stages it ran. `torchrun`: launcher options
    (e.g. '--nproc_per_node 4') the train stages run under."""
    root = Path(workdir)
    order, todo = plan(root)
    get_run_logger().info(f"{len(order) - len(todo)} of {len(order)} stages up to date; "
                          f"running {', '.join(todo) or 'nothing'}")
    done = []
    with stage_server():  # torch and transformers imported once for every stage, not once each
        for stage in todo:
            done.append(run_stage(stage, str(root), torchrun))
    metrics = root / "metrics" / "eval.json"
    if metrics.is_file():
        create_markdown_artifact(key="lmpipe-eval", markdown=eval_markdown(
            metrics, root / "reports" / "index.html"), description="eval metrics and report link")
    return done


if __name__ == "__main__":
    if _args.serve:
        pipeline.serve(name="lmpipe-local", parameters={"workdir": _args.workdir,
                                                        "torchrun": _args.torchrun})
    else:
        pipeline(workdir=_args.workdir, torchrun=_args.torchrun)
