"""Benchmark: the default experiment from a cold start, per-stage and total wall time.

Copies the project into a fresh temporary DVC workspace (no cache, no outputs), runs every stage
in dependency order with `dvc repro --single-item`, and prints a table of wall times, the eval
headline, and each quantized model's size and accuracy against its float twin. Usage: `.venv/bin/python bench/pipeline.py [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.pipeline import stage_order  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run in this directory and keep it (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="lmpipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", "stages", "flows", "lmpipe"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy(src, work / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], cwd=work, env=env, check=True)
    timings = {}
    log = open(work / "bench.log", "w")
    print(f"workspace {work} (stage output in bench.log)")
    total0 = time.perf_counter()
    for stage in stage_order(work):
        t0 = time.perf_counter()
        subprocess.run(["dvc", "repro", "--single-item", stage], cwd=work, env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
        timings[stage] = time.perf_counter() - t0
        print(f"{stage:>15}: {timings[stage]:7.1f} s", flush=True)
    total = time.perf_counter() - total0
    print(f"{'total':>15}: {total:7.1f} s  (budget 300 s; {os.cpu_count()} cores, "
          f"{platform.machine()}, python {platform.python_version()})")
    eval_table = json.loads((work / "metrics" / "eval.json").read_text())
    for model, row in eval_table.items():
        print(f"{model:>15}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()))
    # issue #7's requirements: packed ternary <= 1/15 of fp32; QAT keeps >= 90% of the float
    # twin's tool accuracy (PTQ beside it)
    exports = json.loads((work / "runs/quantize/quantization.json").read_text())["exports"]
    twin = eval_table["distilled"]["tool_accuracy_heldout"]
    for model, figures in exports.items():
        accuracy = eval_table.get(model, {}).get("tool_accuracy_heldout", float("nan"))
        print(f"{model:>15}: linear weights at {figures['ratio']:.4f} of fp32 "
              f"(1/{1 / figures['ratio']:.1f}); held-out tool accuracy {accuracy:.3f} = "
              f"{accuracy / twin:.1%} of the float twin's {twin:.3f}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
