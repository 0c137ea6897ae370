"""Benchmark: recipes/smollm2-ternary.yaml from a cold start, its stage times and its figures.

Runs the recipe once in a fresh temporary DVC workspace, as bench/pipeline.py runs the default
experiment (the same `run_once`: `make run`'s warm stage server, one `dvc repro`), with tiny
Shakespeare from ../shared/data. Prints each stage's wall time and the total (the recipe's header
states it), then per model: parameters, weight bytes, val bits per byte (lmpipe's), lm-eval's bits
per byte over the validation documents (val_text), next-line accuracy (val_next_line, chance
0.25). `--write-readme` rewrites the `smollm2-ternary` blocks of README.md and bench/README.md;
`--out` keeps the raw figures; `--from` rebuilds the blocks from such a file.

    .venv/bin/python bench/smollm2_ternary.py --out bench/smollm2-ternary.json --write-readme
    .venv/bin/python bench/smollm2_ternary.py --from bench/smollm2-ternary.json --write-readme
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from pipeline import machine, run_once  # noqa: E402
from readme_block import write_block  # noqa: E402
from train_throughput import DATA  # noqa: E402

from lmpipe.sweep.recipes import install_recipe  # noqa: E402

RECIPE = ROOT / "recipes" / "smollm2-ternary.yaml"
BLOCK = "smollm2-ternary"
# eval.json key, column title, number format
COLUMNS = [("parameters", "params", "{:,.0f}"), ("weight_bytes", "weight bytes", "{:,.0f}"),
           ("val_bpb", "val bits/byte", "{:.3f}"),
           ("lmeval_bits_per_byte_val_text", "lm-eval bits/byte (val_text)", "{:.3f}"),
           ("lmeval_acc_val_next_line", "next line acc", "{:.3f}"),
           ("lmeval_acc_norm_val_next_line", "next line acc_norm", "{:.3f}")]
LABELS = {"teacher": "teacher: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
          "student": "student from scratch", "distilled": "float student, distilled",
          "quantized": "ternary student (QAT)", "quantized_ptq": "ternary, PTQ of the float student",
          "int8": "int8 weight-only of the float student"}


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table, one row per model."""
    head = "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for model, row in results["eval"].items():
        cells = [fmt.format(row[key]) if key in row else "n/a" for key, _, fmt in COLUMNS]
        lines.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block(results: dict[str, Any]) -> str:
    m = results["machine"]
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in results["timings"].items())
    return (f"Measured {results['date']} by `bench/smollm2_ternary.py` ({m['cores']} cores, "
            f"{m['arch']}, torch {m['torch']}), one cold run of the recipe: "
            f"**{results['total_s'] / 60:.1f} min** in all ({stages}).\n\n{table(results)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    parser.add_argument("--out", type=Path, help="write the raw figures as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="read figures from --out")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite the smollm2-ternary blocks of README.md and bench/README.md")
    args = parser.parse_args(argv)
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        work = args.keep or Path(tempfile.mkdtemp(prefix="lmpipe-smollm2-"))
        work.mkdir(parents=True, exist_ok=True)
        # every section resolved, as `lmpipe run` writes it (DVC wants each key it names)
        resolved = install_recipe(RECIPE, [f"data.path={DATA}", *args.overrides],
                                  work / "params.yaml")
        run = run_once(work, yaml.safe_load(resolved.read_text()), "smollm2-ternary")
        results = {"date": date.today().isoformat(), "machine": machine(),
                   "overrides": args.overrides, **run}
        if not args.keep:
            shutil.rmtree(work)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(block(results))
    if args.write_readme:
        if results.get("overrides"):
            raise SystemExit("refusing to write the READMEs from an overridden recipe")
        for path in (ROOT / "README.md", ROOT / "bench" / "README.md"):
            write_block(path, BLOCK, block(results))


if __name__ == "__main__":
    main()
