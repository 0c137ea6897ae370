"""Benchmark: recipes/same-arch.yaml, distily's first milestone, per seed.

Runs the recipe cold (bench/pipeline.py's `run_once`: a fresh DVC workspace, one `dvc repro`
under the warm stage server) once per seed, with every training and eval seed at 0, 1, ... and
the data fixed, and prints for each: the teacher's and the distilled student's held-out tool
accuracy and their ratio, the validation perplexity ratio exp(teacher loss - student loss), the
steps each trained, and the first periodic eval (20 trained people) at which each reaches its
final tool accuracy's 99%. The milestone holds for a seed when both ratios are at least 0.99 and
the student trained fewer steps than the teacher. Then the mean (min–max) over the seeds;
`--write-readme` writes bench/README.md's block from it, `--from` rebuilds that from `--out`.

    .venv/bin/python bench/same_arch.py --seeds 2 --out bench/same-arch.json --write-readme
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from pipeline import machine, params_for, run_once
from readme_block import write_block

RECIPE = ROOT / "recipes" / "same-arch.yaml"
BENCH_README = ROOT / "bench" / "README.md"
QUALITY = 0.99


def periodic(metrics: Path) -> list[tuple[int, float]]:
    """(step, tool accuracy of the periodic eval's trained people) from a run's metrics.jsonl."""
    records = [json.loads(line) for line in metrics.open(encoding="utf-8")]
    return [(r["step"], r["tool_accuracy"]) for r in records if "tool_accuracy" in r]


def first_reaching(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first step whose accuracy is at least `level`."""
    return next((step for step, accuracy in curve if accuracy >= level), None)


def figures(run: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """One seed's milestone figures from its eval table and periodic curves."""
    teacher, student = run["eval"]["teacher"], run["eval"]["distilled"]
    steps = {"teacher": params["teacher"]["train"]["steps"],
             "distilled": params["distill"]["train"]["steps"]}
    accuracy_ratio = student["tool_accuracy_heldout"] / teacher["tool_accuracy_heldout"]
    perplexity_ratio = math.exp(teacher["val_loss"] - student["val_loss"])
    curves = run["curves"]
    # the step at which the student's periodic accuracy reaches 99% of the teacher's final one
    teacher_final = curves["teacher"][-1][1]
    return {
        "seed": run["seed"], "steps": steps,
        "tool_accuracy_heldout": {"teacher": teacher["tool_accuracy_heldout"],
                                  "distilled": student["tool_accuracy_heldout"],
                                  "scratch": run["eval"]["student"]["tool_accuracy_heldout"]},
        "val_loss": {"teacher": teacher["val_loss"], "distilled": student["val_loss"]},
        "accuracy_ratio": accuracy_ratio, "perplexity_ratio": perplexity_ratio,
        "teacher_reaches_own_final_at": first_reaching(curves["teacher"], QUALITY * teacher_final),
        "student_reaches_teacher_at": first_reaching(curves["distilled"], QUALITY * teacher_final),
        "milestone": (accuracy_ratio >= QUALITY and perplexity_ratio >= QUALITY
                      and steps["distilled"] < steps["teacher"]),
        "total_s": run["total_s"], "curves": curves,
    }


def spread(values: list[float], number: str) -> str:
    text = number.format(sum(values) / len(values))
    low, high = number.format(min(values)), number.format(max(values))
    return text if len(values) == 1 or low == high else f"{text} ({low}–{high})"


def block(results: dict[str, Any]) -> str:
    """bench/README.md's block: one row per seed and the mean (min–max) line."""
    rows = results["seeds"]
    m = results["machine"]
    lines = [(f"Measured with `bench/same_arch.py --seeds {len(rows)}` on {results['date']} "
             f"({m['cores']} CPU cores, {m['arch']}, Python {m['python']}; recipes/same-arch.yaml, "
             f"one cold `dvc repro` a seed, {spread([r['total_s'] / 60 for r in rows], '{:.1f}')} "
             "min each):"), "",
             ("| seed | steps teacher / student | held-out tool acc. teacher / student (ratio) "
             "| val loss teacher / student (perplexity ratio) | student reaches 99% of the "
             "teacher's periodic acc. at step | scratch, same arch, held-out | milestone |"),
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc, loss = r["tool_accuracy_heldout"], r["val_loss"]
        lines.append(
            f"| {r['seed']} | {r['steps']['teacher']} / {r['steps']['distilled']} | "
            f"{acc['teacher']:.3f} / {acc['distilled']:.3f} ({r['accuracy_ratio']:.3f}) | "
            f"{loss['teacher']:.2e} / {loss['distilled']:.2e} ({r['perplexity_ratio']:.4f}) | "
            f"{r['student_reaches_teacher_at'] or 'not reached'} | {acc['scratch']:.3f} | "
            f"{'met' if r['milestone'] else 'not met'} |")
    passed = sum(r["milestone"] for r in rows)
    lines += ["", (f"Accuracy ratio {spread([r['accuracy_ratio'] for r in rows], '{:.3f}')}, "
                  f"perplexity ratio {spread([r['perplexity_ratio'] for r in rows], '{:.4f}')}; "
                  f"the milestone (both ≥ {QUALITY}, fewer steps than the teacher) holds for "
                  f"{passed} of {len(rows)} seeds.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override the recipe's params (not for the README's figures)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="read a previous --out file")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite bench/README.md's same-arch block")
    args = parser.parse_args(argv)
    if args.write_readme and args.overrides:
        parser.error("--write-readme takes the recipe as it is (no overrides)")
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        base = yaml.safe_load(RECIPE.read_text())
        results = {"date": date.today().isoformat(), "machine": machine(),
                   "overrides": args.overrides, "seeds": []}
        for seed in range(args.seeds):
            params = params_for(base, args.overrides, seed)
            work = Path(tempfile.mkdtemp(prefix="lmpipe-same-arch-"))
            try:
                run = run_once(work, params, f"seed {seed}")
                run["seed"] = seed
                run["curves"] = {name: periodic(work / "runs" / stage / "metrics.jsonl")
                                 for name, stage in (("teacher", "teacher"),
                                                     ("distilled", "distill"))}
            finally:
                shutil.rmtree(work)
            results["seeds"].append(figures(run, params))
            if args.out:  # after every seed: a crash keeps what was measured
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    text = block(results)
    print(text)
    if args.write_readme:
        write_block(BENCH_README, "same-arch", text)


if __name__ == "__main__":
    main()
