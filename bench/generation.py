"""Benchmark: batched KV-cache generation with in-loop tool calls vs one prompt at a time.

Answers held-out tool questions with the default student (greedy, tool calls spliced in) at
batch 32 and at batch 1, and prints generated tokens per second both ways (forced database-turn
tokens are not counted). Needs the default pipeline's outputs (`make run`). Usage:

    .venv/bin/python bench/generation.py [--project .] [--model student] [--questions 96]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.core import protocol  # noqa: E402
from lmpipe.data.tooldb import (
    PeopleDB,  # noqa: E402
    sample_people,  # noqa: E402
)
from lmpipe.eval.evaluate import questions_for  # noqa: E402
from lmpipe.eval.generate import Sampling, generate  # noqa: E402
from lmpipe.model.build import load_model  # noqa: E402


def tokens_per_second(model, tokenizer, prompts, db, batch_size: int) -> tuple[float, int, float]:
    started = time.perf_counter()
    done = generate(model, tokenizer, prompts, Sampling(max_new_tokens=48), tool=db.answer,
                    batch_size=batch_size)
    seconds = time.perf_counter() - started
    tokens = sum(g.sampled for g in done)
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(ROOT))
    parser.add_argument("--model", default="student")
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    project = Path(args.project)
    model, tokenizer = load_model(project / "runs" / args.model / "model")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; model "
          f"runs/{args.model} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    with PeopleDB(project / "data/world/people.duckdb") as db:
        people = sample_people(db, "heldout", args.questions, 0)
        questions = questions_for(people)[:args.questions]
        prompts = [protocol.prompt(a, n, with_tool=True) for a, n, _ in questions]
        tokens_per_second(model, tokenizer, prompts[:4], db, 4)  # warm-up
        batched = tokens_per_second(model, tokenizer, prompts, db, args.batch)
        single = tokens_per_second(model, tokenizer, prompts, db, 1)
    for label, (rate, tokens, seconds) in ((f"batch {args.batch}", batched), ("one at a time", single)):
        print(f"  {label:14s} {rate:9,.0f} tokens/s  ({tokens} tokens in {seconds:.2f} s)")
    print(f"  speed-up: {batched[0] / single[0]:.1f}x")


if __name__ == "__main__":
    main()
