"""Benchmark: training steps on glibc's default allocator thresholds against lmpipe's
(`keep_freed_memory`, lmpipe/core/allocator.py), with the page faults each step takes.

At nanoGPT's CPU Shakespeare configuration (train_profile.py's steps: one optimizer step on a
fixed batch, eager), each of nanoGPT's step and lmpipe's (oneDNN linears, as the Trainer runs
it) runs in a fresh process under both settings, `system` (LMPIPE_CPU_ALLOCATOR=system) and `keep`
(the default), alternating. A fresh process per run because the setting is per process and
glibc's thresholds cannot be put back once set. It prints each side's median ms/step with its
range, minor page faults per step, and the speed-up keep gives each side, so the gain lmpipe takes
from it is read beside the gain nanoGPT would take from the same setting.

    .venv/bin/python bench/allocator.py [--repeats 5 --steps 100 --threads 2 --write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import report

SIDES, MODES = ("nanoGPT", "lmpipe"), ("system", "keep")


def child(side: str, steps: int, threads: int) -> None:
    """One side's steps in this process under LMPIPE_CPU_ALLOCATOR; prints ms/step and faults."""
    from linear_kernels import step_sides
    from train_profile import time_steps

    from lmpipe.core.allocator import keep_freed_memory

    applied = keep_freed_memory()
    step = step_sides(threads)["nanoGPT" if side == "nanoGPT" else "lmpipe (oneDNN linears)"]()
    time_steps(step, 10)  # warm: the first steps fault in the pages either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ms = time_steps(step, steps)  # runs 5 more untimed steps first
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (steps + 5)
    print(json.dumps({"ms": ms, "faults": faults, "applied": applied}))


def run(side: str, mode: str, steps: int, threads: int) -> dict:
    env = dict(os.environ, LMPIPE_CPU_ALLOCATOR=mode, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--child", side, "--steps", str(steps),
                          "--threads", str(threads)], env=env, capture_output=True, text=True,
                         check=False, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{side} ({mode}) failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["applied"] != (mode == "keep"):
        raise SystemExit(f"{side} ({mode}): keep_freed_memory() returned {result['applied']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--write-readme", action="store_true", help="the bench/README.md block")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.threads)
    if platform.libc_ver()[0] != "glibc":
        raise SystemExit("the allocator setting applies to glibc only")
    results: dict[tuple[str, str], list[dict]] = {(s, m): [] for s in SIDES for m in MODES}
    for repeat in range(args.repeats):
        order = [(s, m) for s in SIDES for m in (MODES if repeat % 2 == 0 else MODES[::-1])]
        for side, mode in order:
            results[side, mode].append(run(side, mode, args.steps, args.threads))
            print(f"repeat {repeat} {side:>7} {mode:>6}: {results[side, mode][-1]}", flush=True)
    ms = {k: statistics.median(r["ms"] for r in v) for k, v in results.items()}
    lines = [(f"Measured with `bench/allocator.py` on {date.today().isoformat()} "
              f"({os.cpu_count()} CPU cores, {platform.machine()}, Python "
              f"{platform.python_version()}; {args.threads} torch threads, eager, one optimizer "
              f"step on a fixed batch, a fresh process per run; median of {args.repeats} "
              f"alternating repeats of {args.steps} steps):"), "",
             "| side | allocator | ms/step (range) | page faults/step | keep's speed-up |",
             "|---|---|---:|---:|---:|"]
    for side in SIDES:
        for mode in MODES:
            runs = results[side, mode]
            gain = f"{ms[side, 'system'] / ms[side, mode]:.2f}x" if mode == "keep" else ""
            lines.append(f"| {side} | {mode} | {ms[side, mode]:.1f} "
                         f"({min(r['ms'] for r in runs):.1f}–{max(r['ms'] for r in runs):.1f}) | "
                         f"{statistics.median(r['faults'] for r in runs):,.0f} | {gain} |")
    lines += ["", (f"lmpipe (keep) against nanoGPT as it ships (system): "
                   f"{ms['nanoGPT', 'system'] / ms['lmpipe', 'keep']:.2f}x; against nanoGPT "
                   f"given the same setting: {ms['nanoGPT', 'keep'] / ms['lmpipe', 'keep']:.2f}x; "
                   f"both on glibc's defaults: "
                   f"{ms['nanoGPT', 'system'] / ms['lmpipe', 'system']:.2f}x.")]
    report(lines, README, "allocator", args.write_readme)


if __name__ == "__main__":
    main()
