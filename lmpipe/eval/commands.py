"""`lmpipe generate` and `lmpipe probe`: a saved model's text (with the tool), an interactive chat
that keeps its conversation in a prefix cache between turns (an attention model's KV, a recurrent
model's state snapshots), and linear probes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from lmpipe.core.command import Command
from lmpipe.core.paths import WORLD

if TYPE_CHECKING:
    from lmpipe.eval.generate import Generation, Sampling
    from lmpipe.eval.tree_cache import TreeCache


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a saved model directory: float, packed ternary or int8 "
                   "(e.g. runs/teacher/model, runs/quantize/model)")
    p.add_argument("prompt", nargs="?", default="",
                   help="text to continue, or with --db/--chat the question to answer "
                   "(default: empty, i.e. generate from the start of a document; with --chat: "
                   "an interactive chat)")
    p.add_argument("--db", help="a people.duckdb (e.g. data/world/people.duckdb): the prompt is a "
                   "question and the model's tool calls are answered from this database "
                   "(default: no tool)")
    p.add_argument("--chat", action="store_true", help="the prompt is a question in a dialog "
                   "turn, answered from memory without the tool, or with --db with it (default: "
                   "plain continuation). Without a prompt: an interactive chat, one user turn a "
                   "line of stdin, the conversation kept in a prefix cache between turns "
                   "(lines '/stats': its counters; '/quit' or end of input: stop)")
    p.add_argument("--no-cache", action="store_true", help="interactive chat: recompute the whole "
                   "conversation every turn instead (to compare)")
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


def generate_command(args: argparse.Namespace) -> None:
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
        if args.chat and not args.prompt:
            chat(model, tokenizer, sys.stdin, sys.stdout, sampling,
                 tool=db.answer if db else None, prefix_cache=not args.no_cache,
                 prompt="> " if sys.stdin.isatty() else "")
            return
        if args.db or args.chat:
            head = protocol.turn(protocol.SYSTEM, protocol.TOOL_SYSTEM_PROMPT) if db else ""
            prompt = f"{head}{protocol.turn(protocol.USER, args.prompt)}{protocol.ASSISTANT}"
        else:
            prompt = args.prompt  # the tokenizer adds the BOS
            print(args.prompt, end="", flush=True)
        generate(model, tokenizer, [prompt], sampling, tool=db.answer if db else None,
                 batch_size=1, on_token=lambda row, text: print(text, end="", flush=True))
    print()


def chat(model, tokenizer, lines: Iterable[str], out: TextIO, sampling: Sampling,
         tool: Callable[[str], str] | None = None, prefix_cache: bool = True,
         prompt: str = "") -> tuple[list[Generation], TreeCache | None]:
    """An interactive chat: each line of `lines` is a user turn (protocol.turn(USER, line), the
    dialog opened by protocol.head(with_tool)), the model's reply streams to `out` (tool turns
    spliced in), and the conversation grows by both; a reply cut at its token budget is closed
    with END. With `prefix_cache` one prefix cache holds the conversation between turns (its KV,
    or a recurrent model's state after each turn: `prefix_cache_for`), so each turn prefills
    only its new tokens. '/stats' prints the cache's counters, '/quit' (or the
    end of `lines`) stops; the counters are printed at the end. `prompt` is written before each
    line is read. Returns every turn's generation and the cache (None without one)."""
    from lmpipe.core import protocol
    from lmpipe.eval.generate import generate
    from lmpipe.eval.recurrent_prefix_cache import prefix_cache_for

    cache = prefix_cache_for(model) if prefix_cache else None
    limit = getattr(model.config, "max_position_embeddings", None)
    conversation = protocol.head(tool is not None)
    turns: list[Generation] = []

    def counters() -> str:
        if cache is None:
            return "prefix cache: off"
        s = cache.stats()
        total = s["tokens_reused"] + s["tokens_computed"]
        return (f"prefix cache: {s['hits']} of {s['lookups']} turns reused a prefix; prefill "
                f"tokens reused {s['tokens_reused']:,}, computed {s['tokens_computed']:,} "
                f"({s['tokens_computed'] / max(total, 1):.0%} of {total:,}); {s['nodes']} "
                f"nodes, {s['tokens']:,} tokens, {sum(s['bytes'].values()):,} bytes of "
                f"{'state snapshots' if 'snapshots' in s else 'KV'}")

    print(prompt, end="", file=out, flush=True)
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() == "/quit":
            break
        if text.strip() == "/stats":
            print(counters(), file=out)
        elif text.strip():
            asked = conversation + protocol.turn(protocol.USER, text) + protocol.ASSISTANT
            if limit is not None and len(tokenizer(asked)["input_ids"]) >= limit:
                print(f"(the conversation is longer than the model's context, {limit} tokens: "
                      "stopping)", file=out)
                break
            [g] = generate(model, tokenizer, [asked], sampling, tool=tool, batch_size=1,
                           on_token=lambda row, token: print(token, end="", file=out,
                                                             flush=True),
                           prefix_cache=cache)
            print(file=out)
            reply = g.text(tokenizer)
            conversation = asked + (reply if reply.endswith(protocol.END) else
                                    reply + protocol.END)
            turns.append(g)
        print(prompt, end="", file=out, flush=True)
    if prompt:
        print(file=out)
    print(counters(), file=out)
    return turns, cache


GENERATE = Command(
    "generate",
    "stream a saved model's continuation of a prompt (e.g. runs/teacher/model); --db: answer a "
    "question with the tool",
    "Stream a saved model's continuation of a prompt to stdout. With --db or --chat the prompt is "
    "a question put to the model as a dialog turn; with --db the model may call the database "
    "tool, whose replies are spliced in as it generates. --chat without a prompt is an "
    "interactive chat: one user turn a line of stdin, each turn prefilling only its new tokens "
    "(a prefix cache keeps the conversation: its KV, or a recurrent model's state).",
    arguments=_generate_arguments, run=generate_command)


def _probe_arguments(p: argparse.ArgumentParser) -> None:
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


def probe_command(args: argparse.Namespace) -> None:
    """Linear probes on every checkpoint of a run: which layer, at which step, holds each fact."""
    from lmpipe.eval.linear_probe import FINAL
    from lmpipe.eval.probe_run import format_table, probe_run

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


PROBE = Command(
    "probe",
    "fit linear probes on a run's checkpoints (hidden state at each trained person's name -> each "
    "attribute, per layer); writes RUN/linear_probes.jsonl",
    arguments=_probe_arguments, run=probe_command)
