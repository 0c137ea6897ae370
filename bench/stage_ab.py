"""Benchmark: stages of the default experiment under two versions of the code, side by side.

A day-to-day speed drift of 2x on these machines hides what a code change did to a stage's time;
this bench runs the same stages on the same inputs under a base commit's `lmpipe/` and `stages/`
and under the working tree's, alternating, in the same hour. It takes a reproduced workspace
(`bench/pipeline.py --keep DIR`), copies it once per side with that side's code, and runs each
named stage as a whole process (`python -m stages.NAME`, what `stages/run.sh` runs), in order, so
the eval stage reads the models its own side's quantize stage wrote. It prints each run's seconds,
per stage the median base / head ratio over the pairs with its range (and, for a training stage,
the same for its median logged step time, which leaves out imports, exports and evaluations), and
whether the two sides' `metrics/eval.json` figures are equal (a speed change must not change a
figure).

    .venv/bin/python bench/stage_ab.py --workdir DIR --base f72d6d6 [--stages quantize eval] [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("lmpipe", "stages")


def side_workspace(workdir: Path, code_from: str | None, dest: Path) -> Path:
    """A copy of `workdir` whose lmpipe/ and stages/ are the commit `code_from`'s (None: the
    working tree's)."""
    shutil.copytree(workdir, dest, symlinks=True,
                    ignore=shutil.ignore_patterns(*CODE, ".dvc", "__pycache__"))
    if code_from is None:
        for name in CODE:
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "archive", code_from, *CODE], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    return dest


def run_stage(workspace: Path, stage: str) -> float:
    """One stage as a whole process in `workspace`; its wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(workspace))
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=workspace, env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{workspace.name}: stage {stage} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - t0


def median_step_ms(workspace: Path, stage: str) -> float | None:
    """The median of a training stage's logged step times (its run folder runs/STAGE), which
    leaves out imports, exports and evaluations; None for a stage that does not train."""
    metrics = workspace / "runs" / stage / "metrics.jsonl"
    if not metrics.is_file():
        return None
    records = [json.loads(line) for line in metrics.open()]
    steps = [r["step_time_s"] * 1000 for r in records if "step_time_s" in r]
    return statistics.median(steps) if steps else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True,
                        help="a reproduced workspace (bench/pipeline.py --keep DIR)")
    parser.add_argument("--base", required=True, help="the commit to compare the working tree to")
    parser.add_argument("--stages", nargs="+", default=["quantize", "eval"])
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.workdir / "dvc.yaml").is_file():
        raise SystemExit(f"{args.workdir}: not a reproduced workspace (no dvc.yaml)")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="lmpipe-stage-ab-"))
    sides = {"base": side_workspace(args.workdir, args.base, scratch / "base"),
             "head": side_workspace(args.workdir, None, scratch / "head")}
    seconds: dict[str, dict[str, list[float]]] = {s: {st: [] for st in args.stages} for s in sides}
    step_ms: dict[str, dict[str, list[float]]] = {s: {st: [] for st in args.stages} for s in sides}
    figures: dict[str, dict] = {}
    for pair in range(args.pairs):
        for side in (("base", "head") if pair % 2 == 0 else ("head", "base")):
            for stage in args.stages:
                seconds[side][stage].append(run_stage(sides[side], stage))
                step = median_step_ms(sides[side], stage)
                if step is not None:
                    step_ms[side][stage].append(step)
            times = ", ".join(f"{st} {seconds[side][st][-1]:.1f} s" + (
                f" ({step_ms[side][st][-1]:.1f} ms a step)" if step_ms[side][st] else "")
                for st in args.stages)
            print(f"pair {pair} {side}: {times}", flush=True)
            eval_json = sides[side] / "metrics" / "eval.json"
            if eval_json.is_file():
                figures.setdefault(side, json.loads(eval_json.read_text()))
    print(f"\nbase {args.base} against the working tree, {args.pairs} alternating pairs:")
    for stage in args.stages:
        ratios = [b / h for b, h in zip(seconds["base"][stage], seconds["head"][stage])]
        print(f"  {stage}: base {statistics.median(seconds['base'][stage]):.1f} s, head "
              f"{statistics.median(seconds['head'][stage]):.1f} s, base / head "
              f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
        if step_ms["base"][stage]:
            steps = [b / h for b, h in zip(step_ms["base"][stage], step_ms["head"][stage])]
            print(f"    median training step: base {statistics.median(step_ms['base'][stage]):.1f} "
                  f"ms, head {statistics.median(step_ms['head'][stage]):.1f} ms, base / head "
                  f"{statistics.median(steps):.2f}x (range {min(steps):.2f}-{max(steps):.2f})")
    if len(figures) == 2:
        same = figures["base"] == figures["head"]
        print("eval.json figures equal on both sides: " + ("yes" if same else "NO"))
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
