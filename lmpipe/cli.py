"""The `lmpipe` command: run recipes and sweeps, index runs into DuckDB, render reports, query the
store or export it as Parquet, generate with a model (streaming, with the database tool)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmpipe.config import ConfigError
from lmpipe.paths import REPORTS, RUNS, STORE, WORLD


def _index(args: argparse.Namespace) -> None:
    from lmpipe.store import index_runs

    counts = index_runs(Path(args.runs), Path(args.db))
    print(f"indexed into {args.db}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if counts.get("skipped_lines"):
        print(f"warning: {counts['skipped_lines']} unreadable log lines were skipped (per run: "
              "lmpipe query \"SELECT run_id, skipped_lines FROM runs WHERE skipped_lines > 0\")",
              file=sys.stderr)


def _report(args: argparse.Namespace) -> None:
    from lmpipe.report import render_report

    print(render_report(Path(args.db), Path(args.out), color_by=args.color_by, png=args.png))


def _query(args: argparse.Namespace) -> None:
    import duckdb
    import pandas as pd

    from lmpipe.store import query

    try:
        frame = query(Path(args.db), args.sql)
    except duckdb.Error as exc:  # bad SQL, or a write on the read-only connection: no traceback
        raise SystemExit(f"lmpipe query: error: {exc}") from None
    with pd.option_context("display.width", 200):
        # to_string ignores display.max_rows: pass the limit, or a million metric rows scroll by
        print(frame.to_string(index=False, max_rows=args.max_rows))
    if len(frame) > args.max_rows:
        print(f"({len(frame)} rows, {args.max_rows} shown: --max-rows N)")


def _export(args: argparse.Namespace) -> None:
    from lmpipe.store import export_parquet

    for table, (path, rows) in export_parquet(Path(args.db), Path(args.out)).items():
        print(f"{path}: {rows} rows ({table})")


def _generate(args: argparse.Namespace) -> None:
    """Stream a continuation to stdout; with --db the prompt is a question the model may answer
    by calling the database tool (its turns are shown as they are spliced in)."""
    import contextlib

    from lmpipe import protocol
    from lmpipe.generate import Sampling, generate
    from lmpipe.model import load_model
    from lmpipe.tooldb import PeopleDB

    model, tokenizer = load_model(args.model)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty,
                        stop_strings=tuple(args.stop or ()),
                        stop_tokens=tuple(args.stop_token or ()), seed=args.seed)
    with (PeopleDB(Path(args.db)) if args.db else contextlib.nullcontext()) as db:
        if args.db or args.chat:
            head = protocol.turn(protocol.SYSTEM, protocol.TOOL_SYSTEM_PROMPT) if db else ""
            prompt = f"{protocol.BOS}{head}{protocol.turn(protocol.USER, args.prompt)}{protocol.ASSISTANT}"
        else:
            prompt = (tokenizer.bos_token or "") + args.prompt
            print(args.prompt, end="", flush=True)
        generate(model, tokenizer, [prompt], sampling, tool=db.answer if db else None,
                 batch_size=1, on_token=lambda row, text: print(text, end="", flush=True))
    print()


def _probe(args: argparse.Namespace) -> None:
    """Linear probes on every checkpoint of a run: which layer, at which step, holds each fact."""
    from lmpipe.linear_probe import FINAL, format_table, probe_run

    try:
        records, path = probe_run(Path(args.run), Path(args.db), people=args.people,
                                  seed=args.seed, checkpoints=args.checkpoints,
                                  context=args.context, tokenizer_dir=args.tokenizer)
    except (ValueError, ImportError) as exc:  # too few people, scikit-learn missing: no traceback
        raise SystemExit(f"lmpipe probe: error: {exc}") from None
    shown = FINAL if any(r["checkpoint"] == FINAL for r in records) else records[-1]["checkpoint"]
    print(f"linear probe accuracy by layer, {shown} model ({args.context} context; chance = "
          "always the most frequent train label):")
    print(format_table(records, shown))
    checkpoints = len({r["checkpoint"] for r in records})
    print(f"wrote {len(records)} rows ({checkpoints} model(s)) to {path}")


def _run_recipe(args: argparse.Namespace) -> None:
    from lmpipe.recipes import run_recipe

    raise SystemExit(run_recipe(Path(args.recipe), args.overrides, stages=args.stage))


def _sweep(args: argparse.Namespace) -> None:
    """Run (or only queue, or only check) every point of a grid as a DVC experiment."""
    import json
    import subprocess

    from lmpipe.sweep import load_grid

    grid = load_grid(Path(args.grid), overrides=args.overrides)
    print(f"sweep {grid.sweep_id}: {len(grid.points)} points of {grid.pipeline}")
    for point in grid.points:
        print(f"  {point.name}: {point.label()}")
    if args.dry_run:
        return
    if args.queue:  # DVC's own queue: `dvc queue start -j N` runs them in temporary workspaces
        from lmpipe.sweep_run import exp_command

        for point in grid.points:
            subprocess.run(exp_command(grid, point, f"{grid.sweep_id}-{point.name}", queue=True),
                           check=True)
        print(f"queued; run them with: dvc queue start -j {args.jobs or grid.jobs}")
        return
    from lmpipe.sweep_flow import run_sweep

    result = run_sweep(Path(args.grid), Path("."), jobs=args.jobs, runner=args.runner,
                       dask_address=args.dask_address, report=not args.no_report,
                       overrides=args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"sweep {result['sweep']}: {result['points'] - len(result['failed'])} of "
              f"{result['points']} points completed ({len(result['cached'])} restored from DVC's "
              f"cache); failed: {', '.join(result['failed']) or 'none'}; report: {result['report']}")
    if result["failed"]:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="load every run folder into the DuckDB store")
    p.add_argument("--runs", default=str(RUNS))
    p.add_argument("--db", default=str(STORE))
    p.set_defaults(func=_index)
    p = sub.add_parser("report", help="render the self-contained HTML report from the store")
    p.add_argument("--db", default=str(STORE))
    p.add_argument("--out", default=str(REPORTS))
    p.add_argument("--color-by", help="colour curves by this param (e.g. world.people), a sweep "
                   "axis or a runs column; default: the first param a sweep varies, else the run")
    p.add_argument("--png", action="store_true", help="also write every chart as PNG")
    p.set_defaults(func=_report)
    p = sub.add_parser("query", help="run read-only SQL on the store and print the result")
    p.add_argument("sql")
    p.add_argument("--db", default=str(STORE))
    p.add_argument("--max-rows", type=int, default=100)
    p.set_defaults(func=_query)
    p = sub.add_parser("export", help="write every table of the store as Parquet, one file each")
    p.add_argument("--db", default=str(STORE))
    p.add_argument("--out", default=str(STORE.parent / "parquet"))
    p.set_defaults(func=_export)
    p = sub.add_parser("generate", help="stream a saved model's continuation of a prompt "
                       "(e.g. runs/teacher/model); --db: answer a question with the tool")
    p.add_argument("model")
    p.add_argument("prompt", nargs="?", default="")
    p.add_argument("--db", help="a people.duckdb: the prompt is a question, the tool is live")
    p.add_argument("--chat", action="store_true", help="the prompt is a question, no tool")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="0 = off")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--stop-token", action="append", help="stop token, e.g. '<|end|>' (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_generate)
    p = sub.add_parser("probe", help="fit linear probes on a run's checkpoints (hidden state at "
                       "each trained person's name -> each attribute, per layer); writes "
                       "RUN/linear_probes.jsonl")
    p.add_argument("run", help="a training run folder, e.g. runs/teacher")
    p.add_argument("--db", default=str(WORLD / "people.duckdb"), help="the run's people world")
    p.add_argument("--people", type=int, help="at most this many trained people (default: all)")
    p.add_argument("--seed", type=int, default=0, help="fixes the people sample and the split")
    p.add_argument("--checkpoints", choices=["all", "final"], default="all",
                   help="every checkpoints/step_*/ and the final model, or the final model only")
    p.add_argument("--context", choices=["bio", "question", "answer"], default="bio",
                   help="bio: the name's last token after <|bos|>; question: in the recall "
                   "question; answer: the recall prompt's last token (lmpipe/linear_probe.py)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: RUN/model, else data/tokens/"
                   "tokenizer)")
    p.set_defaults(func=_probe)
    p = sub.add_parser("run", help="make a recipe the params.yaml and run the pipeline (dvc repro)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--stage", action="append", help="reproduce only up to this stage (repeatable)")
    p.set_defaults(func=_run_recipe)
    p = sub.add_parser("sweep", help="run every point of a grid.yaml as a DVC experiment "
                       "(Prefect flow: concurrency, retries), then index and report")
    p.add_argument("grid")
    p.add_argument("overrides", nargs="*", help="key.sub=value: pin a key to one value in "
                   "every point (e.g. a tiny trial of a long sweep)")
    p.add_argument("--jobs", type=int, help="points at once (default: the grid's jobs)")
    p.add_argument("--runner", choices=["threads", "dask"], default="threads",
                   help="Prefect task runner: threads here, or a Dask cluster")
    p.add_argument("--dask-address", help="a running Dask scheduler (tcp://host:8786); "
                   "default with --runner dask: a local cluster of --jobs workers")
    p.add_argument("--queue", action="store_true", help="only queue the points for `dvc queue start`")
    p.add_argument("--dry-run", action="store_true", help="check every point and list them, run nothing")
    p.add_argument("--no-report", action="store_true", help="skip indexing and reports at the end")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=_sweep)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ConfigError) as exc:
        parser.exit(2, f"lmpipe {args.command}: error: {exc}\n")


if __name__ == "__main__":
    main()
