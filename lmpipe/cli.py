"""The `lmpipe` command: run recipes and sweeps, index runs into DuckDB, render reports, query the
store or export it as Parquet, generate with a model (streaming, with the database tool).

Each command imports what it needs inside its own function, so `lmpipe --help`, `lmpipe index`
or `lmpipe query` do not pay seconds for torch and transformers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmpipe.core.paths import REPORTS, RUNS, STORE, WORLD
from lmpipe.params.config import ConfigError


def _index(args: argparse.Namespace) -> None:
    from lmpipe.store.index import index_runs

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

    from lmpipe.store.index import query

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
    from lmpipe.store.index import export_parquet

    for table, (path, rows) in export_parquet(Path(args.db), Path(args.out)).items():
        print(f"{path}: {rows} rows ({table})")


def _generate(args: argparse.Namespace) -> None:
    """Stream a continuation to stdout; with --db the prompt is a question the model may answer
    by calling the database tool (its turns are shown as they are spliced in)."""
    import contextlib

    from lmpipe.core import protocol
    from lmpipe.data.tooldb import PeopleDB
    from lmpipe.eval.generate import Sampling, generate
    from lmpipe.model.build import load_model

    model, tokenizer = load_model(args.model)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty,
                        stop_strings=tuple(args.stop or ()),
                        stop_tokens=tuple(args.stop_token or ()), seed=args.seed)
    with (PeopleDB(Path(args.db)) if args.db else contextlib.nullcontext()) as db:
        if args.db or args.chat:
            head = protocol.turn(protocol.SYSTEM, protocol.TOOL_SYSTEM_PROMPT) if db else ""
            prompt = f"{head}{protocol.turn(protocol.USER, args.prompt)}{protocol.ASSISTANT}"
        else:
            prompt = args.prompt  # the tokenizer adds the BOS
            print(args.prompt, end="", flush=True)
        generate(model, tokenizer, [prompt], sampling, tool=db.answer if db else None,
                 batch_size=1, on_token=lambda row, text: print(text, end="", flush=True))
    print()


def _probe(args: argparse.Namespace) -> None:
    """Linear probes on every checkpoint of a run: which layer, at which step, holds each fact."""
    from lmpipe.eval.linear_probe import FINAL, format_table, probe_run

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
    from lmpipe.sweep.recipes import run_recipe

    raise SystemExit(run_recipe(Path(args.recipe), args.overrides, stages=args.stage))


def _sweep(args: argparse.Namespace) -> None:
    """Run (or only queue, or only check) every point of a grid as a DVC experiment."""
    import json
    import subprocess

    from lmpipe.sweep.grid import load_grid

    grid = load_grid(Path(args.grid), overrides=args.overrides)
    print(f"sweep {grid.sweep_id}: {len(grid.points)} points of {grid.pipeline}")
    for point in grid.points:
        print(f"  {point.name}: {point.label()}")
    if args.dry_run:
        return
    if args.queue:  # DVC's own queue: `dvc queue start -j N` runs them in temporary workspaces
        from lmpipe.sweep.dvc_exp import exp_command, pipeline_visible

        with pipeline_visible(Path("."), grid.pipeline, grid.sweep_id):  # queued snapshots keep it
            for point in grid.points:
                subprocess.run(exp_command(grid, point, f"{grid.sweep_id}-{point.name}",
                                           queue=True), check=True)
        print(f"queued; run them with: dvc queue start -j {args.jobs or grid.jobs}")
        return
    from lmpipe.sweep.flow import run_sweep

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


def _command(sub: argparse._SubParsersAction, name: str, summary: str,
             description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose `--help` opens with `description`, else with its one-line `summary`."""
    return sub.add_parser(name, help=summary, description=description or summary[0].upper()
                          + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    """The `lmpipe` parser: one subcommand each, every argument with a help that explains it."""
    parser = argparse.ArgumentParser(prog="lmpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do; `lmpipe COMMAND --help` explains its arguments")
    db_help = "the run database (DuckDB file) written by `lmpipe index` (default: %(default)s)"
    p = _command(sub, "index", "load every run folder into the DuckDB store",
                 "Load every run folder into the DuckDB store, incrementally "
                 "(only new or changed runs are read; deleted folders are dropped).")
    p.add_argument("--runs", default=str(RUNS),
                   help="folder holding the run folders to index (default: %(default)s)")
    p.add_argument("--db", default=str(STORE),
                   help="the DuckDB file to create or update (default: %(default)s)")
    p.set_defaults(func=_index)
    p = _command(sub, "report", "render the self-contained HTML report from the store",
                 "Render the self-contained HTML report pages from the store.")
    p.add_argument("--db", default=str(STORE), help=db_help)
    p.add_argument("--out", default=str(REPORTS),
                   help="folder the HTML pages are written to (default: %(default)s)")
    p.add_argument("--color-by", help="colour curves by this param (e.g. world.people), a sweep "
                   "axis or a runs column; default: the first param a sweep varies, else the run")
    p.add_argument("--png", action="store_true",
                   help="also write every chart as a PNG file beside the pages (default: off)")
    p.set_defaults(func=_report)
    p = _command(sub, "query", "run read-only SQL on the store and print the result",
                 "Run read-only SQL on the store and print the result table.")
    p.add_argument("sql", help="one SQL statement in DuckDB's dialect, e.g. "
                   "\"SELECT run_id, stage FROM runs\" (writes are refused)")
    p.add_argument("--db", default=str(STORE), help=db_help)
    p.add_argument("--max-rows", type=int, default=100,
                   help="print at most this many rows, then the total count (default: %(default)s)")
    p.set_defaults(func=_query)
    p = _command(sub, "export", "write every table of the store as Parquet, one file each",
                 "Write every table of the store as OUT/<table>.parquet.")
    p.add_argument("--db", default=str(STORE), help=db_help)
    p.add_argument("--out", default=str(STORE.parent / "parquet"),
                   help="folder the Parquet files are written to (default: %(default)s)")
    p.set_defaults(func=_export)
    p = _command(sub, "generate", "stream a saved model's continuation of a prompt "
                 "(e.g. runs/teacher/model); --db: answer a question with the tool",
                 "Stream a saved model's continuation of a prompt to stdout. "
                 "With --db or --chat the prompt is a question put to the model as a "
                 "dialog turn; with --db the model may call the database tool, whose "
                 "replies are spliced in as it generates.")
    p.add_argument("model", help="a saved model directory: float, packed ternary or int8 "
                   "(e.g. runs/teacher/model, runs/quantize/model)")
    p.add_argument("prompt", nargs="?", default="",
                   help="text to continue, or with --db/--chat the question to answer "
                   "(default: empty, i.e. generate from the start of a document)")
    p.add_argument("--db", help="a people.duckdb (e.g. data/world/people.duckdb): the prompt is a "
                   "question and the model's tool calls are answered from this database "
                   "(default: no tool)")
    p.add_argument("--chat", action="store_true", help="the prompt is a question in a dialog "
                   "turn, answered from memory without the tool (default: plain continuation)")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="stop after this many generated tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature for sampling; 0 = greedy, always the most likely "
                   "token (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=40,
                   help="sample only among the k most likely tokens; 0 = off "
                   "(default: %(default)s; ignored when greedy)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: sample only among the most likely tokens whose "
                   "probabilities sum to p, in (0, 1] (default: off; ignored when greedy)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalize tokens already in the text, prompt included (positive scores "
                   "divided by this factor, negative ones multiplied); 1.0 = off, >1 discourages "
                   "repeats (default: %(default)s)")
    p.add_argument("--stop", action="append", help="stop once the generated text contains this "
                   "string (repeatable; <|end|> and <|eos|> always stop)")
    p.add_argument("--stop-token", action="append", help="stop at this token, e.g. '<|end|>' "
                   "(repeatable; <|end|> and <|eos|> always stop)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the sampling: the same seed repeats the same text "
                   "(default: %(default)s)")
    p.set_defaults(func=_generate)
    p = _command(sub, "probe", "fit linear probes on a run's checkpoints (hidden state at "
                 "each trained person's name -> each attribute, per layer); writes "
                 "RUN/linear_probes.jsonl")
    p.add_argument("run", help="a training run folder, e.g. runs/teacher")
    p.add_argument("--db", default=str(WORLD / "people.duckdb"),
                   help="the run's people world (default: %(default)s)")
    p.add_argument("--people", type=int, help="at most this many trained people (default: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the people sample and the train/test split (default: %(default)s)")
    p.add_argument("--checkpoints", choices=["all", "final"], default="all",
                   help="every checkpoints/step_*/ and the final model, or the final model only "
                   "(default: %(default)s)")
    p.add_argument("--context", choices=["bio", "question", "answer"], default="bio",
                   help="bio: the name's last token after <|bos|>; question: in the recall "
                   "question; answer: the recall prompt's last token (lmpipe/eval/linear_probe.py) "
                   "(default: %(default)s)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: RUN/model, else data/tokens/"
                   "tokenizer)")
    p.set_defaults(func=_probe)
    p = _command(sub, "run", "make a recipe the params.yaml and run the pipeline (dvc repro)")
    p.add_argument("recipe", help="a recipe params file, e.g. recipes/people-tools.yaml; it is "
                   "validated, written as params.yaml and run")
    p.add_argument("overrides", nargs="*", help="key.sub=value: set a param on top of the recipe "
                   "(e.g. world.people=500; repeatable)")
    p.add_argument("--stage", action="append", help="reproduce only up to this stage, a dvc.yaml "
                   "stage name such as distill (repeatable; default: the whole pipeline)")
    p.set_defaults(func=_run_recipe)
    p = _command(sub, "sweep", "run every point of a grid.yaml as a DVC experiment "
                 "(Prefect flow: concurrency, retries), then index and report")
    p.add_argument("grid", help="the grid file listing the values to cross, e.g. grid.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value: pin a key to one value in "
                   "every point (e.g. a tiny trial of a long sweep)")
    p.add_argument("--jobs", type=int, help="points at once (default: the grid's jobs)")
    p.add_argument("--runner", choices=["threads", "dask"], default="threads",
                   help="Prefect task runner: threads here, or a Dask cluster "
                   "(default: %(default)s)")
    p.add_argument("--dask-address", help="a running Dask scheduler (tcp://host:8786); "
                   "default with --runner dask: a local cluster of --jobs workers")
    p.add_argument("--queue", action="store_true",
                   help="only queue the points for `dvc queue start`")
    p.add_argument("--dry-run", action="store_true",
                   help="check every point and list them, run nothing")
    p.add_argument("--no-report", action="store_true",
                   help="skip indexing and reports at the end")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=_sweep)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ConfigError) as exc:
        parser.exit(2, f"lmpipe {args.command}: error: {exc}\n")


if __name__ == "__main__":
    main()
