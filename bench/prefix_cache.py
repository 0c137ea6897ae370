"""Benchmark: the prefix-tree cache (lmpipe/eval/prefix_cache.py: KV; with --arch mamba or hawk,
lmpipe/eval/recurrent_prefix_cache.py: state snapshots) on the eval's own
conversation trees (issue 20).

The workload is the eval's (lmpipe/eval/conversations.py): `conversation_trees(people, turns=6,
branches=3, seed=0)`, one conversation a person asking six of their attributes in turn plus three
branches forking after a seeded turn and asking about someone else, answered by
`run_conversations` level by level (every turn at depth d in one batched `generate` call, greedy,
tool calls answered by a PeopleDB over a world written with `write_world`). Three modes, each run
in a fresh process (its own peak RSS), alternating none / cache / budget for --repeats rounds
(the machine is shared: the medians are compared):

  none    no prefix cache: every prompt prefilled whole
  cache   `conversation_cache(model)`: host memory, unbounded
  budget  `conversation_cache(model, memory_mb=...)`: a host budget of --budget-share (10%) of
          the working set (the unbounded run's peak KV bytes), least-recently-used KV paged out
          to disk under a temporary folder and back in on a hit

It prints the prefill tokens computed (the issue asks <= 1/3 of without), the end-to-end seconds
of `run_conversations` and the speed-ups (>= 2x unbounded, >= 1.5x under the budget), the page
counters, and each mode's peak RSS. The model is built from config (--arch, llama by default;
untrained: it writes no tool queries and its turns run to --max-new-tokens) or `--model DIR`, a
saved lmpipe model whose max_seq_len holds a six-question conversation (>= 1024, e.g.
recipes/conversations.yaml's teacher) with `--world` the folder of its people.duckdb. Usage:

    .venv/bin/python bench/prefix_cache.py                  # 8 people: a couple of minutes
    .venv/bin/python bench/prefix_cache.py --people 200     # the issue's workload
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
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from readme_block import upsert_row

from lmpipe.data.params import WorldParams
from lmpipe.data.tokenizer import build_byte_tokenizer
from lmpipe.data.tooldb import PeopleDB
from lmpipe.data.world import write_world
from lmpipe.eval.conversations import (
    conversation_cache,
    conversation_trees,
    run_conversations,
)
from lmpipe.model.build import build_model, load_model
from lmpipe.model.params import ARCHS, ModelParams

TURNS, BRANCHES = 6, 3
MODES = ("none", "cache", "budget")


def child(args: argparse.Namespace) -> None:
    """One mode once, in this process: its figures as one JSON line on stdout."""
    torch.manual_seed(0)
    if args.model:
        model, tokenizer = load_model(args.model)
    else:
        tokenizer = build_byte_tokenizer()
        model = build_model(ModelParams(arch=args.arch, d_model=args.d_model,
                                        n_layers=args.layers, n_heads=4,
                                        max_seq_len=args.max_seq_len), seed=0,
                            tokenizer=tokenizer)
    model.eval()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with PeopleDB(Path(args.world) / "people.duckdb") as db:
        people = db.people("train")[:args.people]
        trees = conversation_trees(people, TURNS, BRANCHES, seed=0)
        memory_mb = args.budget_bytes / 2**20 if args.only == "budget" else None
        with conversation_cache(model, args.only != "none", memory_mb) as cache:
            started = time.perf_counter()
            answered = run_conversations(model, tokenizer, trees, db.answer,
                                         args.max_new_tokens, args.batch, prefix_cache=cache)
            seconds = time.perf_counter() - started
            stats = cache.stats() if cache is not None else None
    prompt_tokens = sum(map(len, tokenizer([a.prompt for a in answered])["input_ids"]))
    print(json.dumps({
        "seconds": seconds, "prompt_tokens": prompt_tokens, "prompts": len(answered),
        "outputs": [a.generation.ids for a in answered],
        "tool_calls": sum(len(a.generation.tool_calls) for a in answered),
        "correct": sum(a.answer.strip() == a.turn.expected for a in answered),
        "stats": stats, "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": sum(p.numel() for p in model.parameters())}))


def run_child(args: argparse.Namespace, mode: str, budget: int = 0) -> dict:
    command = [sys.executable, __file__, "--only", mode, "--budget-bytes", str(budget),
               "--people", str(args.people), "--batch", str(args.batch),
               "--max-new-tokens", str(args.max_new_tokens), "--world", args.world,
               "--arch", args.arch, "--d-model", str(args.d_model), "--layers", str(args.layers),
               "--max-seq-len", str(args.max_seq_len)]
    if args.model:
        command += ["--model", args.model]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench/prefix_cache.py: the {mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=8, help="people, one conversation tree "
                        "each (default: %(default)s; the issue's workload: 200)")
    parser.add_argument("--batch", type=int, default=256, help="generate's batch size, the "
                        "eval's default (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--budget-share", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of none / cache / "
                        "budget, alternating; medians compared (default: %(default)s)")
    parser.add_argument("--model", default=None, help="a saved lmpipe model with max_seq_len "
                        ">= 1024 (default: a llama built from config)")
    parser.add_argument("--world", default=None, help="folder of people.duckdb (default: a "
                        "world of --people people written to a temporary folder)")
    parser.add_argument("--arch", default="llama", choices=ARCHS,
                        help="the architecture of the model built from config (the recurrent: "
                        "the cache of state snapshots, lmpipe/eval/recurrent_prefix_cache.py)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--label", help="the model's name in the README row (default: the "
                        "architecture and size built from config, or --model)")
    parser.add_argument("--write-readme", type=Path, action="append", default=[],
                        metavar="MARKDOWN", help="put this run's row into the prefix-cache table "
                        "of a Markdown file (README.md, bench/README.md; repeatable)")
    parser.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--budget-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        child(args)
        return
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as world:
        if args.world is None:
            write_world(WorldParams(seed=0, people=args.people, heldout_people=0), world)
            args.world = world
        budget = 0
        for _ in range(args.repeats):
            runs["none"].append(run_child(args, "none"))
            runs["cache"].append(run_child(args, "cache"))
            if not budget:  # the working set: the unbounded cache's peak KV bytes
                working_set = runs["cache"][0]["stats"]["peak_bytes"]["host"]
                budget = max(1, int(args.budget_share * working_set))
            runs["budget"].append(run_child(args, "budget", budget))
    load_after = os.getloadavg()
    median = {mode: statistics.median(r["seconds"] for r in rs) for mode, rs in runs.items()}
    none, cache, paged = (runs[mode][0] for mode in MODES)
    model = args.model or (f"{args.arch} built from config (d={args.d_model}, {args.layers} "
                           f"layers, max_seq_len {args.max_seq_len}, untrained)")
    print(f"machine: {os.cpu_count()} CPU cores {platform.machine()}, Python "
          f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"torch threads (OMP_NUM_THREADS sets them); load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    print(f"model: {model}, {none['parameters']:,} parameters")
    print(f"workload: conversation_trees({args.people} people, turns={TURNS}, "
          f"branches={BRANCHES}) = {none['prompts']} prompts by run_conversations, batch "
          f"{args.batch}, greedy, <= {args.max_new_tokens} tokens a turn, {none['tool_calls']} "
          f"tool calls, {none['correct']} answers right")
    print(f"{'':34s}{'prefill tokens':>15s}{'seconds (median; each run)':>34s}{'speed-up':>10s}"
          f"{'same output':>13s}{'peak RSS MB':>13s}")
    labels = {"none": "no cache", "cache": "cache (host, unbounded)",
              "budget": f"cache, host budget {budget:,} B"}
    for mode in MODES:
        run = runs[mode][0]
        computed = run["stats"]["tokens_computed"] if run["stats"] else run["prompt_tokens"]
        same = min(sum(a == b for a, b in zip(r["outputs"], none["outputs"])) for r in runs[mode])
        each = "(" + " ".join(f"{r['seconds']:.2f}" for r in runs[mode]) + ")"
        print(f"  {labels[mode]:32s}{computed:15,d}{median[mode]:9.2f}  {each:23s}"
              f"{median['none'] / median[mode]:9.2f}x{same:7d}/{len(none['outputs']):<5d}"
              f"{max(r['rss_peak_mb'] for r in runs[mode]):13.0f}")
    ratio = cache["stats"]["tokens_computed"] / none["prompt_tokens"]
    print(f"  prefill tokens with the cache / without: {ratio:.3f} (issue: <= 0.333)")
    print(f"  end-to-end speed-up: {median['none'] / median['cache']:.2f}x unbounded (issue: "
          f">= 2), {median['none'] / median['budget']:.2f}x under the budget (issue: >= 1.5)")
    for label, run in (("unbounded", cache), ("budget", paged)):
        s = run["stats"]
        print(f"  {label}: lookups {s['lookups']}, hits {s['hits']}, tokens reused "
              f"{s['tokens_reused']:,}, nodes {s['nodes']}, evicted {s['nodes_evicted']}, "
              f"cache bytes now {s['bytes']} peak {s['peak_bytes']}, paged out "
              f"{s['paged_out_bytes']}, paged in {s['paged_in_bytes']}, written to disk "
              f"{s['disk_written_bytes']:,}; RSS after loading {run['rss_loaded_mb']:.0f} MB")
    peak = max(r["stats"]["peak_bytes"]["host"] for r in runs["budget"])
    for markdown in args.write_readme:
        write_row(markdown, args, none, cache, median, runs)
    print(f"  working set {working_set:,} B of cache (KV or state snapshots); budget "
          f"{budget:,} B ({args.budget_share:.0%}); the budget runs' host peak {peak:,} B (a "
          "budget plus one row's prefix, mid-prefill)")

TABLE = ("| model | workload | prefill tokens, cache / none | no cache (s) | cache (s) | "
         "10% budget (s) | same outputs | measured |\n|---|---|---:|---:|---:|---:|---:|---|")


def write_row(markdown: Path, args: argparse.Namespace, none: dict, cache: dict,
              median: dict[str, float], runs: dict[str, list[dict]]) -> None:
    """This run's row of the prefix-cache table (readme_block.upsert_row): medians with the
    speed-ups, the run count, the date and the load."""
    label = args.label or (args.model if args.model else
                           f"{args.arch} d={args.d_model}, {args.layers} layers, untrained")
    threads = torch.get_num_threads()
    label += f", {threads} torch thread{'s' if threads > 1 else ''}"
    computed = cache["stats"]["tokens_computed"]
    whole = none["prompt_tokens"]
    same = min(sum(o == n for o, n in zip(r["outputs"], none["outputs"]))
               for rs in runs.values() for r in rs)
    workload = (f"{args.people} people, {none['prompts']:,} prompts, <= {args.max_new_tokens} "
                f"tokens a turn, {none['tool_calls']} tool calls")
    row = [label, workload,
           f"{computed:,} / {whole:,} = **{computed / whole:.3f}**",
           f"{median['none']:.2f}",
           f"{median['cache']:.2f} (**{median['none'] / median['cache']:.2f}x**)",
           f"{median['budget']:.2f} (**{median['none'] / median['budget']:.2f}x**)",
           f"{same}/{none['prompts']}",
           f"{time.strftime('%Y-%m-%d')}, medians of {args.repeats}"]
    upsert_row(markdown, "prefix-cache", TABLE, row)


if __name__ == "__main__":
    main()
