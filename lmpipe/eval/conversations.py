"""Conversation trees: a person's questions asked in turn in one growing dialog, with branches.

A conversation about person P asks `turns` different attributes of P one after another; each
question is appended to the conversation so far, which holds the model's own earlier turns (its
queries, the database's replies, its answers), so turn k is answered with k - 1 rounds in context.
A tree adds `branches` follow-ups: each forks after a seeded turn j of the main line (sharing
its first j rounds) and asks about another sampled person (P again when there is no other), so
one prefix has several continuations, as in an evaluation that explores a dialog.

`run_conversations` answers a whole forest level by level: every turn at depth d, of every tree,
in one batched `generate` call (lmpipe/eval/generate.py: the tool calls run inside the loop).
A turn the model leaves unfinished (its token budget spent) is closed with END by the
environment before the next user turn, so the dialog stays in the protocol.

With `tool_error_rate` the database is flaky: the first time a query is seen in a level it is
answered `protocol.TOOL_BUSY` with that probability (seeded by the query), and the model may call
again (two calls a turn). Scored per turn by exact match (`conversation_records`): does accuracy
hold as the conversation grows?

Turn d + 1's prompt is turn d's prompt and generation plus a question, so with a prefix cache
(`conversation_cache`: attention KV, lmpipe/eval/prefix_cache.py, or a recurrent model's state
snapshots, lmpipe/eval/recurrent_prefix_cache.py) every level prefills only what the level
before it did not compute: the new question, and the whole prompt only at depth 1. The answers
are the same with and without it; `cache_records` turns its counters into eval records.
"""

from __future__ import annotations

import random
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmpipe.core import protocol
from lmpipe.eval.generate import Generation, Sampling, generate
from lmpipe.eval.kv_tiers import DEVICE, HOST
from lmpipe.eval.recurrent_prefix_cache import prefix_cache_for
from lmpipe.eval.tree_cache import TreeCache

Tool = Callable[[str], str]


@dataclass(frozen=True)
class Turn:
    """One question of a tree: `parent` indexes the turn whose conversation it continues."""

    tree: int
    depth: int  # 1 = the conversation's first question
    parent: int | None
    attribute: str
    name: str
    expected: str
    branch: bool = False


def conversation_trees(people: list[dict[str, str]], turns: int, branches: int,
                       seed: int) -> list[Turn]:
    """Every turn of one tree per person, parents before children; deterministic in `seed`."""
    if not 1 <= turns <= len(protocol.ATTRIBUTES):
        raise ValueError(f"turns: expected 1..{len(protocol.ATTRIBUTES)} (one question per "
                         f"attribute), got {turns}")
    if branches and turns < 2:
        raise ValueError("branches: a branch forks after a turn of the main line and before its "
                         "last; expected turns >= 2")
    rng = random.Random(seed)
    out: list[Turn] = []
    for tree, person in enumerate(people):
        line: list[int] = []
        for depth, attribute in enumerate(rng.sample(protocol.ATTRIBUTES, turns), start=1):
            out.append(Turn(tree, depth, line[-1] if line else None, attribute, person["name"],
                            person[attribute]))
            line.append(len(out) - 1)
        others = [p for p in people if p["name"] != person["name"]] or [person]
        for _ in range(branches):
            after = rng.randint(1, turns - 1)  # shares the main line's first `after` rounds
            other = rng.choice(others)
            attribute = rng.choice(protocol.ATTRIBUTES)
            out.append(Turn(tree, after + 1, line[after - 1], attribute, other["name"],
                            other[attribute], branch=True))
    return out


class BusyTool:
    """A database that fails for a moment: a query seen for the first time is answered
    TOOL_BUSY with probability `rate` (drawn from `seed` and the query text), its retry works."""

    def __init__(self, tool: Tool, rate: float, seed: int) -> None:
        self.tool, self.rate, self.seed = tool, rate, seed
        self.seen: set[str] = set()
        self.busy = 0

    def __call__(self, query: str) -> str:
        first = query not in self.seen
        self.seen.add(query)
        draw = zlib.crc32(f"{self.seed}\0{query}".encode()) / 2**32
        if first and draw < self.rate:
            self.busy += 1
            return protocol.TOOL_BUSY
        return self.tool(query)


@dataclass
class Answered:
    """A turn's prompt (the conversation before it), the model's generation and its answer."""

    turn: Turn
    prompt: str
    generation: Generation
    answer: str

    def transcript(self, tokenizer) -> str:
        """The conversation through this turn, closed with END if the model left it open."""
        text = self.prompt + self.generation.text(tokenizer)
        return text if text.endswith(protocol.END) else text + protocol.END


def run_conversations(model, tokenizer, trees: list[Turn], tool: Tool | None,
                      max_new_tokens: int = 48, batch_size: int = 256,
                      tool_error_rate: float = 0.0, seed: int = 0,
                      **generate_options: Any) -> list[Answered]:
    """Answer every turn of `trees` greedily, level by level (module docstring); the answers are
    in the order of `trees`. `generate_options` go to `generate` (e.g. a prefix cache)."""
    with_tool = tool is not None
    check_fits(model, tokenizer, trees, with_tool)
    answered: list[Answered | None] = [None] * len(trees)
    depth = 1
    while True:
        level = [i for i, t in enumerate(trees) if t.depth == depth]
        if not level:
            break
        prompts = []
        for i in level:
            turn = trees[i]
            before = (protocol.head(with_tool) if turn.parent is None
                      else answered[turn.parent].transcript(tokenizer))
            prompts.append(before + protocol.ask(turn.attribute, turn.name))
        level_tool = (BusyTool(tool, tool_error_rate, seed * 1000 + depth)
                      if with_tool and tool_error_rate else tool)
        done = generate(model, tokenizer, prompts, Sampling(max_new_tokens=max_new_tokens),
                        tool=level_tool, batch_size=batch_size,
                        max_tool_calls=2 if with_tool and tool_error_rate else 1,
                        **generate_options)
        for i, prompt, g in zip(level, prompts, done):
            answered[i] = Answered(trees[i], prompt, g, g.last_turn(tokenizer))
        depth += 1
    return answered  # type: ignore[return-value]


def ideal_transcript(trees: list[Turn], index: int, with_tool: bool) -> str:
    """The conversation through turn `index` as a model that answers right would have it."""
    path = []
    while index is not None:
        path.append(trees[index])
        index = trees[index].parent
    rounds = [protocol.Round(t.attribute, t.name, t.expected) for t in reversed(path)]
    return protocol.conversation(rounds, with_tool)


def check_fits(model, tokenizer, trees: list[Turn], with_tool: bool) -> None:
    """Refuse, before any generation, trees whose deepest conversation (answered right, without
    retries) is longer than the model's context: its last turns would measure the context
    length, not the conversation."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None or not trees:
        return
    deepest = max(range(len(trees)), key=lambda i: trees[i].depth)
    tokens = len(tokenizer(ideal_transcript(trees, deepest, with_tool))["input_ids"])
    if tokens > limit:
        raise ValueError(
            f"eval.conversation_turns: a conversation of {trees[deepest].depth} questions takes "
            f"about {tokens} tokens, more than the model's context ({limit}, its "
            "model.max_seq_len); expected fewer turns or a model with max_seq_len >= "
            f"{tokens + 64}")


def conversation_records(split: str, answered: list[Answered]) -> list[dict[str, Any]]:
    """Exact-match `conversation_accuracy` over every turn (turn null) and per turn depth
    (branches at their depth), as eval records."""
    hits: dict[int | None, list[int]] = defaultdict(list)
    for a in answered:
        correct = int(a.answer.strip() == a.turn.expected)
        hits[None].append(correct)
        hits[a.turn.depth].append(correct)
    return [{"metric": "conversation_accuracy", "split": split, "attribute": None, "turn": turn,
             "value": sum(v) / len(v), "n": len(v)}
            for turn, v in sorted(hits.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0))]


@contextmanager
def conversation_cache(model: torch.nn.Module, enabled: bool = True,
                       memory_mb: float | None = None,
                       pages_under: str | Path | None = None) -> Iterator[TreeCache | None]:
    """A prefix cache for one `run_conversations` (pass it as `prefix_cache=`), or None when
    `enabled` is off: of KV for an attention model, of state snapshots for a recurrent one
    (`prefix_cache_for`). `memory_mb`: the byte budget of each memory tier (host; the compute
    device too on an accelerator), least-recently-used pages beyond it paged out to disk in a
    temporary folder under `pages_under` (the eval's run folder; default: the system's temporary
    directory), removed at the end; None = unbounded, no disk."""
    if not enabled:
        yield None
        return
    budgets = None
    if memory_mb is not None:
        memory = int(memory_mb * 2**20)
        on_device = next(model.parameters()).device.type != "cpu"
        budgets = {HOST: memory, **({DEVICE: memory} if on_device else {})}
    with (tempfile.TemporaryDirectory(prefix="kv-pages-", dir=pages_under)
          if memory_mb is not None else nullcontext()) as folder:
        cache = prefix_cache_for(model, budgets, directory=folder)
        try:
            yield cache
        finally:
            cache.close()


CACHE_METRICS = ("prefix_cache_hit_rate", "prefix_cache_tokens_reused",
                 "prefix_cache_tokens_computed", "prefix_cache_paged_out_bytes",
                 "prefix_cache_paged_in_bytes")


def cache_records(split: str, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """A prefix cache's counters (TreeCache.stats) as eval records: the share of prompts that
    reused a prefix (n: prompts), prefill tokens reused and computed (n: prefill tokens of the
    prompts, what a run without the cache computes), and bytes paged out of and back into
    memory, over every tier (n: null)."""
    prefill = stats["tokens_reused"] + stats["tokens_computed"]
    values = [(stats["hits"] / max(stats["lookups"], 1), stats["lookups"]),
              (stats["tokens_reused"], prefill), (stats["tokens_computed"], prefill),
              (sum(stats["paged_out_bytes"].values()), None),
              (sum(stats["paged_in_bytes"].values()), None)]
    return [{"metric": metric, "split": split, "attribute": None, "value": float(value), "n": n}
            for metric, (value, n) in zip(CACHE_METRICS, values)]
