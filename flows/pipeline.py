"""Prefect flow for the default experiment: every DVC stage as a task, in dependency order.

Each task runs `dvc repro --single-item <stage>`, so DVC's cache still decides what actually reruns;
Prefect adds the order, retries, logs and a markdown artifact with the eval metrics and a link to
the report. Run it with `python flows/pipeline.py`, serve it with `python flows/pipeline.py --serve`,
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
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

PROJECT = Path(__file__).resolve().parents[1]


def stage_order(workdir: Path) -> list[str]:
    """The stages of `workdir/dvc.yaml` in dependency order, read through DVC itself.

    DVC's index holds every dvc.yaml in the repository, recipes' included; only the root
    pipeline's stages are this flow's to run.
    """
    import networkx as nx
    from dvc.repo import Repo

    root_file = (Path(workdir) / "dvc.yaml").resolve()
    with Repo(str(workdir)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        return [stage.name for stage in reversed(list(nx.topological_sort(graph)))
                if Path(stage.dvcfile.path).resolve() == root_file]


@task(retries=2, retry_delay_seconds=5, task_run_name="dvc repro {stage}")
def run_stage(stage: str, workdir: str) -> str:
    logger = get_run_logger()
    # this interpreter's DVC: `.venv/bin/python flows/pipeline.py` works without the venv on PATH
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage],
                            cwd=workdir,
                            capture_output=True, text=True, env=os.environ.copy())
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
def pipeline(workdir: str = str(PROJECT)) -> list[str]:
    """Reproduce every stage of the DVC pipeline in `workdir`, then publish the eval summary."""
    root = Path(workdir)
    done = []
    for stage in stage_order(root):
        done.append(run_stage(stage, str(root)))
    metrics = root / "metrics" / "eval.json"
    if metrics.is_file():
        create_markdown_artifact(key="lmpipe-eval", markdown=eval_markdown(
            metrics, root / "reports" / "index.html"), description="eval metrics and report link")
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(PROJECT))
    parser.add_argument("--serve", action="store_true", help="serve as a deployment instead of running")
    args = parser.parse_args()
    if args.serve:
        pipeline.serve(name="lmpipe-local", parameters={"workdir": args.workdir})
    else:
        pipeline(workdir=args.workdir)
