"""The `lmpipe` command: run recipes and grids, index runs into DuckDB, render reports, query the
store, generate with a model (streaming, with the database tool)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmpipe.config import ConfigError
from lmpipe.paths import REPORTS, RUNS, STORE


def _index(args: argparse.Namespace) -> None:
    from lmpipe.store import index_runs

    counts = index_runs(Path(args.runs), Path(args.db))
    print(f"indexed into {args.db}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if counts.get("skipped_lines"):
        print(f"warning: {counts['skipped_lines']} unreadable log lines were skipped", file=sys.stderr)


def _report(args: argparse.Namespace) -> None:
    from lmpipe.report import render_report

    print(render_report(Path(args.db), Path(args.out)))


def _query(args: argparse.Namespace) -> None:
    import pandas as pd

    from lmpipe.store import query

    with pd.option_context("display.max_rows", args.max_rows, "display.width", 200):
        print(query(Path(args.db), args.sql).to_string(index=False))


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


def _run_recipe(args: argparse.Namespace) -> None:
    from lmpipe.recipes import run_recipe

    raise SystemExit(run_recipe(Path(args.recipe), args.overrides, stages=args.stage))


def _grid(args: argparse.Namespace) -> None:
    import subprocess

    from lmpipe.recipes import grid_command, grid_points

    axes, count = grid_points(Path(args.grid), Path("params.yaml"))
    command = grid_command(axes)
    print(f"{count} points: {' '.join(command)}")
    if not args.dry_run:
        raise SystemExit(subprocess.call(command))


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
    p.set_defaults(func=_report)
    p = sub.add_parser("query", help="run read-only SQL on the store and print the result")
    p.add_argument("sql")
    p.add_argument("--db", default=str(STORE))
    p.add_argument("--max-rows", type=int, default=100)
    p.set_defaults(func=_query)
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
    p = sub.add_parser("run", help="make a recipe the params.yaml and run the pipeline (dvc repro)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--stage", action="append", help="reproduce only up to this stage (repeatable)")
    p.set_defaults(func=_run_recipe)
    p = sub.add_parser("grid", help="queue every point of a grid.yaml as a DVC experiment")
    p.add_argument("grid")
    p.add_argument("--dry-run", action="store_true", help="check and print, queue nothing")
    p.set_defaults(func=_grid)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ConfigError) as exc:
        parser.exit(2, f"lmpipe {args.command}: error: {exc}\n")


if __name__ == "__main__":
    main()
