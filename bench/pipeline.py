"""Benchmark: the default experiment from a cold start, per-stage and total wall time, and its
headline figures with their spread over seeds.

Copies the project into a fresh temporary DVC workspace (no cache, no outputs), runs one `dvc
repro` there as `make run` does (under the warm stage server, lmpipe/core/warm_server.py;
`--fresh-processes` for plain `dvc repro`, every stage importing torch itself), and prints a table of wall times, the eval
headline, and each quantized model's size and accuracy against its float twin.

Beside each cold run it times nanoGPT's CPU Shakespeare run (../shared/anchors/README.md's command,
2000 iterations, whole process, from a scratch copy of the anchor; bench/train_throughput.py)
right after it, and prints the ratio experiment / nanoGPT (issue #18: at most 2.0), as the median
and range over the pairs; `--no-nanogpt` skips it.

`--seeds N` runs the experiment N times, one cold workspace after another, with the training and
eval seeds (every `<section>.train.seed` and `eval.seed`, as a sweep's `seeds` axis sets them,
lmpipe/sweep/grid.py) at 0, 1, ... N-1 and the data fixed, then prints the headline table (per
model: parameters, validation loss, tool accuracy on trained and held-out people, weight bytes) as
the mean and, in brackets, the lowest and highest over the seeds (aggregated with DuckDB).
`--write-readme` rewrites the README's "Latest figures of the default experiment" block (between
`<!-- bench:pipeline:start -->` and `<!-- bench:pipeline:end -->`) from that table, with the date
and the machine; `--out` keeps the raw figures as JSON, and `--from` rebuilds the table (and the
README block) from such a file without running anything. `key=value` arguments (or `--tiny`, a
seconds-long configuration for trying the bench itself) override params.yaml in the workspaces;
the README is not written from an overridden experiment unless `--write-readme` names a file.

    .venv/bin/python bench/pipeline.py [--keep DIR]               # one cold run (~5 minutes)
    .venv/bin/python bench/pipeline.py --seeds 3 --out bench-seeds.json --write-readme
    .venv/bin/python bench/pipeline.py --from bench-seeds.json --write-readme   # no rerun
    .venv/bin/python bench/pipeline.py --tiny --seeds 2 --write-readme /tmp/README.md
    .venv/bin/python bench/pipeline.py --write-lock    # the committed dvc.lock from a real run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from readme_block import markers, write_block  # noqa: E402
from train_throughput import DATA, nanogpt_run, nanogpt_workspace  # noqa: E402

from flows.pipeline import stage_order  # noqa: E402
from lmpipe.params.config import apply_overrides, validate_params  # noqa: E402
from lmpipe.sweep.grid import default_seed_keys  # noqa: E402

README = ROOT / "README.md"
START, END = markers("pipeline")
COPIED = ("dvc.yaml", "params.yaml", "stages", "flows", "lmpipe")
# a configuration that runs every stage in well under a minute: for trying the bench, not for
# figures (the same scale as tests/e2e/test_pipeline.py)
TINY = ["world.people=60", "world.heldout_people=12",
        "teacher.model.d_model=32", "teacher.model.n_layers=1", "teacher.train.steps=60",
        "teacher.train.batch_size=16", "teacher.train.lr=0.01", "teacher.train.warmup_steps=5",
        "teacher.train.eval_every=30", "teacher.train.eval_people=4",
        "student.model.d_model=16", "student.model.n_layers=1", "student.train.steps=30",
        "student.train.batch_size=16", "student.train.warmup_steps=5",
        "student.train.eval_people=0",
        "distill.train.steps=30", "distill.train.batch_size=16", "distill.train.warmup_steps=5",
        "distill.train.eval_people=0",
        "quantize.train.steps=20", "quantize.train.batch_size=16",
        "quantize.train.warmup_steps=2", "quantize.train.qat_warmup_steps=10",
        "quantize.train.eval_people=0",
        "eval.trained_people=8", "eval.heldout_people=8", "eval.max_new_tokens=40"]
# the README table: (eval.json key, column title, number format)
COLUMNS = [("parameters", "params", "{:,.0f}"), ("val_loss", "val loss", "{:#.3g}"),
           ("tool_accuracy_trained", "tool acc., trained", "{:.3f}"),
           ("tool_accuracy_heldout", "tool acc., held-out", "{:.3f}"),
           ("weight_bytes", "weight bytes", "{:,.0f}")]
TERMS = {"forward_kl": "KL", "reverse_kl": "reverse KL", "ce": "CE", "jsd": "JSD", "tvd": "TVD",
         "attention_kl": "attention KL", "hidden_mse": "hidden MSE",
         "hidden_cosine": "hidden cosine"}


def params_for(base: dict[str, Any], overrides: list[str], seed: int | None) -> dict[str, Any]:
    """The workspace's params: the project's, then `overrides`, then the seed in every seed key."""
    tree = apply_overrides(json.loads(json.dumps(base)), overrides)
    if seed is not None:
        tree = apply_overrides(tree, [f"{key}={seed}" for key in default_seed_keys(base)])
    validate_params(tree, source="bench params")
    return tree


def run_once(work: Path, params: dict[str, Any], label: str,
             fresh_processes: bool = False) -> dict[str, Any]:
    """Run the pipeline cold in `work` (under the warm stage server as `make run` does, or with
    `fresh_processes` plain `dvc repro`); return its stage timings, eval table and exports."""
    work.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy(src, work / name)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], cwd=work, env=env, check=True)
    timings: dict[str, float] = {}
    print(f"{label}: workspace {work} (stage output in bench.log)")
    # one `dvc repro`, as `make run` does; a stage's time runs from DVC's "Running stage" line to
    # the next one (the first includes DVC's start, the last its lock and plots writing)
    total0 = time.perf_counter()
    current, since = None, total0

    def close(now: float) -> None:
        if current is not None:
            timings[current] = now - since
            print(f"{current:>15}: {timings[current]:7.1f} s", flush=True)

    with open(work / "bench.log", "w") as log:
        command = ["dvc", "repro"] if fresh_processes else \
            [sys.executable, "-m", "lmpipe.core.warm_server", "--", "dvc", "repro"]
        process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            log.write(line)
            started = re.match(r"Running stage '([^']+)':", line)
            if started:
                now = time.perf_counter()
                close(now)
                current, since = started.group(1), (since if current is None else now)
        if process.wait() != 0:
            raise SystemExit(f"dvc repro failed in {work}: see {work / 'bench.log'}")
    close(time.perf_counter())
    missing = set(stage_order(work)) - set(timings)
    if missing:
        raise SystemExit(f"dvc repro ran no stage {sorted(missing)}: see {work / 'bench.log'}")
    total = time.perf_counter() - total0
    print(f"{'total':>15}: {total:7.1f} s  (budget 300 s; {os.cpu_count()} cores, "
          f"{platform.machine()}, python {platform.python_version()})")
    eval_table = json.loads((work / "metrics" / "eval.json").read_text())
    for model, row in eval_table.items():
        print(f"{model:>15}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()))
    # issue #7's requirements: packed ternary <= 1/15 of fp32; QAT keeps >= 90% of the float
    # twin's tool accuracy (PTQ beside it)
    exports = json.loads((work / "runs/quantize/quantization.json").read_text())["exports"]
    # a corpus without people (e.g. a Shakespeare recipe) has no tool accuracy to compare
    twin = eval_table["distilled"].get("tool_accuracy_heldout")
    for model, figures in exports.items():
        line = (f"{model:>15}: linear weights at {figures['ratio']:.4f} of fp32 "
                f"(1/{1 / figures['ratio']:.1f})")
        if twin is not None:
            accuracy = eval_table.get(model, {}).get("tool_accuracy_heldout", float("nan"))
            share = f"{accuracy / twin:.1%}" if twin else "n/a"
            line += (f"; held-out tool accuracy {accuracy:.3f} = {share} of the float twin's "
                     f"{twin:.3f}")
        print(line)
    return {"timings": timings, "total_s": total, "eval": eval_table,
            "exports": {m: {"ratio": f["ratio"]} for m, f in exports.items()}}


def machine() -> dict[str, Any]:
    import torch

    return {"cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# --- the spread over seeds ----------------------------------------------------------------------

def spread(results: dict[str, Any]) -> pd.DataFrame:
    """model, metric, mean, min, max, n over the runs, in eval.json's model order; plus the rows
    of model `total_s` (wall time) and `qat_share` (quantized / distilled held-out accuracy)."""
    rows = [(run["seed"], model, metric, float(value))
            for run in results["runs"] for model, figures in run["eval"].items()
            for metric, value in figures.items()]
    rows += [(run["seed"], "run", "total_s", run["total_s"]) for run in results["runs"]]
    frame = pd.DataFrame(rows, columns=["seed", "model", "metric", "value"])
    order = list(dict.fromkeys(frame["model"]))
    with duckdb.connect() as con:
        con.register("figures", frame)
        out = con.execute("""
            WITH share AS (  -- per seed, then over seeds: QAT's share of its float twin
                SELECT q.seed, 'run' AS model, 'qat_share' AS metric,
                       q.value / nullif(d.value, 0) AS value
                FROM figures q JOIN figures d USING (seed, metric)
                WHERE q.model = 'quantized' AND d.model = 'distilled'
                  AND metric = 'tool_accuracy_heldout'
            )
            SELECT model, metric, avg(value) AS mean, min(value) AS min, max(value) AS max,
                   count(value) AS n
            FROM (SELECT * FROM figures UNION ALL SELECT * FROM share)
            GROUP BY model, metric""").df()
    out["order"] = out["model"].map({m: i for i, m in enumerate(order)})
    return out.sort_values(["order", "metric"]).drop(columns="order").reset_index(drop=True)


def cell(row: pd.Series | None, number: str) -> str:
    """mean (min–max), or the value alone with one run or no spread."""
    if row is None or pd.isna(row["mean"]):
        return "–"
    text = number.format(row["mean"])
    low, high = number.format(row["min"]), number.format(row["max"])
    return text if row["n"] <= 1 or low == high else f"{text} ({low}–{high})"


def model_label(model: str, params: dict[str, Any]) -> str:
    """What the model is, from the params it was trained with."""
    def steps(section: str) -> str:
        train = params[section]["train"]
        optimizer = train.get("optimizer", "adamw")
        return f"{train['steps']:,} steps" + ("" if optimizer == "adamw" else f" of {optimizer}")

    teacher, student = params["teacher"]["model"], params["student"]["model"]
    terms = [TERMS.get(t, t.replace("_", " ")) for t, w in params["distill"]["objective"].items()
             if w > 0]
    return {
        "teacher": f"teacher (d={teacher['d_model']}, {teacher['n_layers']} "
                   f"layer{'s' if teacher['n_layers'] != 1 else ''}, {steps('teacher')})",
        "student": f"student from scratch (d={student['d_model']}, {steps('student')})",
        "distilled": f"distilled student ({' + '.join(terms)}, {steps('distill')})",
        "quantized": f"quantized: ternary {params['quantize']['method'].upper()} of the distilled "
                     f"({steps('quantize')})",
        "quantized_ptq": "quantized_ptq: ternary PTQ of the distilled",
        "int8": "int8: weight-only int8 of the distilled",
    }.get(model, model)


def figures_block(results: dict[str, Any]) -> str:
    """The README block: the date and machine line, the headline table, and what every model
    shares (recall and knowledge bits) with QAT's share of its float twin."""
    table = spread(results)
    rows = {(r.model, r.metric): r._asdict() for r in table.itertuples(index=False)}
    seeds = [run["seed"] for run in results["runs"]]
    m = results["machine"]
    device = m["gpu"] or "no GPU"
    total = cell(rows.get(("run", "total_s")), "{:.0f}")
    command = "bench/pipeline.py" + (f" --seeds {len(seeds)}" if len(seeds) > 1 else "")
    if len(seeds) > 1:
        what = (f"{len(seeds)} cold starts with the training and eval seeds at "
                f"{', '.join(map(str, seeds))} (the data fixed), {total} s a run; each figure is "
                "the mean over the seeds and, in brackets, the lowest and highest")
    else:
        what = f"cold start, {total} s in all"
    if results.get("overrides"):
        what += f"; overrides: `{' '.join(results['overrides'])}`"
    lines = [f"Measured with `{command}` on {results['date']} ({m['cores']} CPU cores, "
             f"{m['arch']}, {device}, Python {m['python']}, torch {m['torch']}; {what}):", "",
             "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    models = [model for model in dict.fromkeys(table["model"]) if model != "run"]
    for model in models:
        lines.append(f"| {model_label(model, results['params'])} | " + " | ".join(
            cell(rows.get((model, key)), number) for key, _, number in COLUMNS) + " |")
    shared = []
    for metric, name, number in (("recall_trained", "recall without the tool is", "{:.3f}"),
                                 ("knowledge_bits_trained", "knowledge bits are", "{:,.0f}")):
        values = {cell(rows.get((model, metric)), number) for model in models}
        if len(values) == 1 and values != {"–"}:
            shared.append(f"{name} {values.pop()} for every model")
    share = rows.get(("run", "qat_share"))
    text = "; ".join(shared)
    if share is not None and pd.notna(share["mean"]):
        text += ("; " if text else "") + ("ternary QAT keeps " + cell(share, "{:.1%}") +
                                          " of the distilled student's held-out tool accuracy")
    if text:
        lines += ["", text[0].upper() + text[1:] + "."]
    checks = headline_checks(results)
    if checks:
        passed = sum(line.endswith("PASS") for line in checks)
        lines += ["", f"Headline (teacher held-out tool accuracy ≥ 0.9, distilled above scratch): "
                      f"{passed} of {len(checks)} seed{'s' if len(checks) != 1 else ''} pass."]
    speed = nanogpt_lines(results)
    if speed:
        lines += ["", speed[0][0].upper() + speed[0][1:] + "."]
    return "\n".join(lines)


def headline(results: dict[str, Any]) -> str:
    """The printed table: per model, every headline column as mean (min–max)."""
    table = spread(results)
    rows = {(r.model, r.metric): r._asdict() for r in table.itertuples(index=False)}
    models = [m for m in dict.fromkeys(table["model"]) if m != "run"]
    frame = pd.DataFrame([{"model": m, **{title: cell(rows.get((m, key)), number)
                                          for key, title, number in COLUMNS}} for m in models])
    seeds = [run["seed"] for run in results["runs"]]
    return (f"headline over seeds {seeds} (mean (min–max)); run wall time "
            f"{cell(rows.get(('run', 'total_s')), '{:.1f}')} s\n" + frame.to_string(index=False))


def headline_checks(results: dict[str, Any]) -> list[str]:
    """Issue 15's headline, per seed: the teacher's held-out tool accuracy is at least 0.9 and
    the distilled student's is above the scratch student's (same architecture and steps)."""
    lines = []
    for run in results["runs"]:
        figures = run["eval"]
        teacher = figures.get("teacher", {}).get("tool_accuracy_heldout")
        distilled = figures.get("distilled", {}).get("tool_accuracy_heldout")
        scratch = figures.get("student", {}).get("tool_accuracy_heldout")
        if None in (teacher, distilled, scratch):
            continue
        ok = teacher >= 0.9 and distilled > scratch
        lines.append(f"seed {run['seed']}: teacher held-out {teacher:.3f} (>= 0.9), distilled "
                     f"{distilled:.3f} > scratch {scratch:.3f}: {'PASS' if ok else 'FAIL'}")
    return lines


def nanogpt_reference(nano: Path, total: float) -> float:
    """nanoGPT's whole run (2000 iterations, the anchor's command) timed now, and the ratio."""
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    seconds = nanogpt_run(nano, 2000, False, env)["wall_s"]
    print(f"{'nanoGPT run':>15}: {seconds:7.1f} s  (the experiment took {total / seconds:.2f}x "
          "that)", flush=True)
    return seconds


def nanogpt_lines(results: dict[str, Any]) -> list[str]:
    """The experiment's wall time over nanoGPT's, median and range over the runs."""
    ratios = [run["total_s"] / run["nanogpt_s"] for run in results["runs"] if "nanogpt_s" in run]
    if not ratios:
        return []
    return [f"default experiment / nanoGPT run: {statistics.median(ratios):.2f}x (range "
            f"{min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} pair"
            f"{'s' if len(ratios) != 1 else ''}; required at most 2.0)"]


def write_readme(path: Path, block: str) -> None:
    """Replace the pipeline block of `path` with `block`."""
    write_block(path, "pipeline", block)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override params.yaml in the workspaces "
                        "(e.g. teacher.train.steps=100)")
    parser.add_argument("--keep", help="run in this directory and keep it (default: a temp dir; "
                        "with --seeds, one subfolder per seed)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run N times with the training and eval seeds at 0..N-1")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long configuration, to try the bench (not for figures)")
    parser.add_argument("--no-nanogpt", action="store_true",
                        help="do not time nanoGPT's Shakespeare run beside each run")
    parser.add_argument("--fresh-processes", action="store_true",
                        help="plain `dvc repro` (each stage in a fresh process) instead of "
                             "`make run`'s warm stage server")
    parser.add_argument("--out", type=Path, help="write the raw figures of every run as JSON")
    parser.add_argument("--from", dest="source", type=Path,
                        help="read the figures from a previous --out file instead of running")
    parser.add_argument("--write-lock", action="store_true",
                        help="copy the (seed 0) run's dvc.lock into the project: the committed "
                        "lock then describes the committed code (tests/project/test_dvc_lock.py)")
    parser.add_argument("--write-readme", nargs="?", const=README, type=Path, metavar="FILE",
                        help="rewrite the figures block of the README (default README.md)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    overrides = (TINY if args.tiny else []) + args.overrides
    if args.write_lock and (overrides or args.source):
        parser.error("--write-lock takes the lock of a run of the unmodified experiment "
                     "(no overrides, no --from)")

    if args.source:
        results = json.loads(args.source.read_text())
    else:
        base = yaml.safe_load((ROOT / "params.yaml").read_text())
        seeds = list(range(args.seeds)) if args.seeds > 1 else [None]
        results = {"date": date.today().isoformat(), "machine": machine(),
                   "overrides": overrides, "seed_keys": default_seed_keys(base),
                   "params": params_for(base, overrides, None), "runs": []}
        nano = None if args.no_nanogpt or args.tiny else nanogpt_workspace(DATA)
        for seed in seeds:
            params = params_for(base, overrides, seed)
            if args.keep:
                work = Path(args.keep) / (f"seed{seed}" if seed is not None else "")
            else:
                work = Path(tempfile.mkdtemp(prefix="lmpipe-bench-"))
            label = f"seed {seed}" if seed is not None else "run"
            run = run_once(work, params, label, args.fresh_processes)
            if nano is not None:
                run["nanogpt_s"] = nanogpt_reference(nano, run["total_s"])
            results["runs"].append({"seed": seed if seed is not None else 0, **run})
            if args.write_lock and not overrides and seed in (None, 0):
                shutil.copy(work / "dvc.lock", ROOT / "dvc.lock")
                print(f"wrote {ROOT / 'dvc.lock'} from the {label}")
            if not args.keep:
                shutil.rmtree(work)
            if args.out:  # after every run: a crash keeps what was measured
                args.out.write_text(json.dumps(results, indent=2) + "\n")
        if nano is not None:
            shutil.rmtree(nano.parent)
    print(headline(results))
    print("\n".join(headline_checks(results) + nanogpt_lines(results)))
    if args.write_readme:
        if results.get("overrides") and args.write_readme.resolve() == README.resolve():
            raise SystemExit("refusing to write README.md from an overridden experiment; name "
                             "another file (--write-readme FILE)")
        write_readme(args.write_readme, figures_block(results))


if __name__ == "__main__":
    main()
