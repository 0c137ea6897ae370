"""Conversation trees: their shape, the dialog each turn sees, per-turn scoring checked against
scripted models whose accuracy per turn is known in advance, the flaky database's retries, and
the prefix cache carrying a conversation from level to level (a tiny real llama: the same
generations as without it, the prefill tokens an exact oracle expects, the eval's counters)."""

import re

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.conversations import (
    CACHE_METRICS,
    BusyTool,
    Turn,
    conversation_cache,
    conversation_records,
    conversation_trees,
    run_conversations,
)
from lmpipe.eval.evaluate import headline, score_conversations
from lmpipe.eval.params import EvalParams
from tests.eval.tiny_models import noisy_llama

PEOPLE = [{"name": f"Person {c}", **{a: f"{a}-{c}" for a in protocol.ATTRIBUTES}} for c in "ABC"]

# the question templates, inverted: which attribute of whom the last user turn asks
ASKED = [(a, re.compile(re.escape(q).replace(re.escape("{name}"), "(.+)") + "$"))
         for a, q in protocol.QUESTIONS.items()]


def _asked(text: str) -> tuple[str, str]:
    question = text.rsplit(protocol.USER, 1)[1].split(protocol.END, 1)[0]
    return next((a, m.group(1)) for a, pattern in ASKED if (m := pattern.match(question)))


class ConversationModel(torch.nn.Module):
    """Queries the database for the last question, retries after a busy reply (unless
    `retry` is off) and copies the reply; from user turn `forget_after` + 1 on it answers
    "?" instead. Its cache is the token history, so generate's real loop drives it."""

    def __init__(self, tokenizer, forget_after: int = 99, retry: bool = True):
        super().__init__()
        self.tok, self.forget_after, self.retry = tokenizer, forget_after, retry
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"max_position_embeddings": 4096})()
        self.user_turns_seen: list[int] = []

    def _plan(self, text: str) -> str:
        turns = text.count(protocol.USER)
        if turns > self.forget_after:
            return "?" + protocol.END
        last = text.rsplit(protocol.USER, 1)[1]
        call = f"{protocol.CALL}{protocol.Query(*_asked(text)).render()}{protocol.END}"
        if protocol.DB not in last:
            return call
        reply = last.rsplit(protocol.DB, 1)[1].split(protocol.END)[0]
        if reply == protocol.TOOL_BUSY and self.retry:
            return call
        return reply + protocol.END

    def _next(self, ids: list[int]) -> int:
        text = self.tok.decode([i for i in ids if i != self.tok.pad_token_id])
        done = self.tok(text.rsplit(protocol.ASSISTANT, 1)[1], add_special_tokens=False)["input_ids"]
        plan = self.tok(self._plan(text), add_special_tokens=False)["input_ids"]
        return plan[len(done)] if len(done) < len(plan) else self.tok.pad_token_id

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                use_cache=True, logits_to_keep=0):
        # its cache is the token history; a prefill is handed generate's empty KV cache
        prefill = not isinstance(cache, torch.Tensor)
        history = input_ids if prefill else torch.cat([cache, input_ids], 1)
        if prefill:  # a prefill: how many questions each row's conversation holds
            self.user_turns_seen += [self.tok.decode(ids).count(protocol.USER)
                                     for ids in history.tolist()]
        logits = torch.full((input_ids.shape[0], 1, len(self.tok)), -1e9)
        for row, ids in enumerate(history.tolist()):
            logits[row, 0, self._next(ids)] = 0.0
        return type("Out", (), {"logits": logits, "cache": history})()


def test_a_tree_is_a_main_line_of_distinct_attributes_and_branches_about_others():
    trees = conversation_trees(PEOPLE, turns=4, branches=2, seed=7)
    assert len(trees) == 3 * (4 + 2)
    for tree in range(3):
        turns = [(i, t) for i, t in enumerate(trees) if t.tree == tree]
        line = [(i, t) for i, t in turns if not t.branch]
        assert [t.depth for _, t in line] == [1, 2, 3, 4]
        assert [t.parent for _, t in line] == [None] + [i for i, _ in line[:-1]]
        assert len({t.attribute for _, t in line}) == 4 and {t.name for _, t in line} == {
            PEOPLE[tree]["name"]}
        for _, branch in [(i, t) for i, t in turns if t.branch]:
            parent = trees[branch.parent]
            assert not parent.branch and parent.tree == tree and branch.depth == parent.depth + 1
            assert 2 <= branch.depth <= 4 and branch.name != PEOPLE[tree]["name"]
            other = next(p for p in PEOPLE if p["name"] == branch.name)
            assert branch.expected == other[branch.attribute]
    assert conversation_trees(PEOPLE, 4, 2, seed=7) == trees != conversation_trees(PEOPLE, 4, 2, 8)
    with pytest.raises(ValueError, match="turns: expected 1..6"):
        conversation_trees(PEOPLE, turns=7, branches=0, seed=0)


def test_each_turn_sees_the_conversation_so_far_and_is_scored_at_its_depth(tokenizer):
    trees = conversation_trees(PEOPLE, turns=3, branches=1, seed=0)
    db = {(p["name"], a): p[a] for p in PEOPLE for a in protocol.ATTRIBUTES}

    def tool(query: str) -> str:
        q = protocol.parse_query(query)
        return db[(q.name, q.attribute)]

    model = ConversationModel(tokenizer, forget_after=2)
    answered = run_conversations(model, tokenizer, trees, tool, max_new_tokens=40)
    # every turn at depth d was prefilled with exactly d questions in its context
    assert sorted(model.user_turns_seen) == sorted(t.depth for t in trees)
    for a in answered:
        if a.turn.parent is not None:  # the parent's whole exchange, query and reply included
            parent = answered[a.turn.parent]
            assert a.prompt.startswith(parent.prompt + parent.generation.text(tokenizer))
            assert f"{protocol.DB}{parent.turn.expected}{protocol.END}" in a.prompt
    records = {r["turn"]: r for r in conversation_records("heldout", answered)}
    # the scripted model answers its first two turns and forgets from the third on
    assert records[1]["value"] == 1.0 and records[2]["value"] == 1.0 and records[3]["value"] == 0.0
    assert (records[1]["n"], records[2]["n"], records[3]["n"]) == (
        3, 3 + sum(t.branch and t.depth == 2 for t in trees), 3 + sum(t.branch and t.depth == 3
                                                                       for t in trees))
    overall = records[None]
    assert overall["n"] == len(trees) and overall["value"] == pytest.approx(
        sum(t.depth <= 2 for t in trees) / len(trees))


def test_a_busy_database_is_retried_and_without_retries_the_busy_turns_are_lost(tokenizer,
                                                                               tiny_world):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        people = db.people("heldout")[:4]
        trees = conversation_trees(people, turns=3, branches=0, seed=1)
        kept = run_conversations(ConversationModel(tokenizer), tokenizer, trees, db.answer,
                                 max_new_tokens=60, tool_error_rate=0.5, seed=3)
        lost = run_conversations(ConversationModel(tokenizer, retry=False), tokenizer, trees,
                                 db.answer, max_new_tokens=60, tool_error_rate=0.5, seed=3)
    busy = [len(a.generation.tool_calls) == 2 for a in kept]
    assert 0 < sum(busy) < len(trees)  # some turns met a busy database, not all
    assert all(a.generation.tool_calls[0][1] == protocol.TOOL_BUSY for a, b in zip(kept, busy) if b)
    assert [a.answer for a in kept] == [t.expected for t in trees]
    # the same draws without a retry: exactly the busy turns answer the error text
    assert [a.answer == protocol.TOOL_BUSY for a in lost] == busy


def test_the_flaky_tool_fails_a_query_once_with_its_seeded_probability():
    tool = BusyTool(lambda q: "ok", rate=0.3, seed=0)
    first = [tool(f"FIND major FOR P{i}") for i in range(2000)]
    assert abs(first.count(protocol.TOOL_BUSY) / 2000 - 0.3) < 0.04
    assert [tool(f"FIND major FOR P{i}") for i in range(2000)] == ["ok"] * 2000  # retries work


def test_records_put_every_turn_and_each_depth_in_its_own_row():
    turn = Turn(0, 2, 0, "major", "P", "x")
    answered = [type("A", (), {"turn": Turn(0, 1, None, "major", "P", "x"), "answer": "x"})(),
                type("A", (), {"turn": turn, "answer": " x "})(),
                type("A", (), {"turn": turn, "answer": "y"})()]
    rows = conversation_records("trained", answered)
    assert [(r["turn"], r["value"], r["n"]) for r in rows] == [(None, 2 / 3, 3), (1, 1.0, 1),
                                                              (2, 0.5, 2)]


def test_trees_longer_than_the_models_context_are_refused_before_generating(tokenizer):
    trees = conversation_trees(PEOPLE, turns=6, branches=0, seed=0)
    model = ConversationModel(tokenizer)
    model.config.max_position_embeddings = 300  # six tool rounds take ~700 byte tokens
    with pytest.raises(ValueError, match=r"eval.conversation_turns: a conversation of 6 "
                                         r"questions takes about \d+ tokens, more than .* \(300"):
        run_conversations(model, tokenizer, trees, lambda q: "x")
    assert model.user_turns_seen == []  # nothing was generated


# -- the prefix cache across a conversation's levels ----------------------------------------------


@pytest.fixture(scope="module")
def calling_llama(tokenizer):
    """A tiny llama with noisy weights (logits of order 1: a wrong prefix KV changes its greedy
    tokens) that opens every assistant turn with a tool call and leans towards END, so its
    turns mix tool calls spliced in, answers it stops and answers cut at the token budget."""
    model = noisy_llama(max_seq_len=512, noise=0.5, seed=1)
    assistant, call, end = tokenizer.convert_tokens_to_ids([protocol.ASSISTANT, protocol.CALL,
                                                            protocol.END])

    class Calling(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids, **kwargs):
            out = self.inner(input_ids=input_ids, **kwargs)
            last = out.logits[:, -1]
            last[:, end] += 4.0
            last[:, call] -= 1e4
            last[input_ids[:, -1] == assistant, call] += 2e4
            return out

    return Calling().eval()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def oracle(tokenizer, answered) -> tuple[int, int]:
    """(reused, computed) prefill tokens of a cache that stores each level's prompts and the
    tokens they fed (all generated ones but the last) and gives each prompt its longest common
    prefix with them, short of its last token; and every prompt's tokens (no cache)."""
    stored: list[list[int]] = []
    reused = computed = 0
    for depth in sorted({a.turn.depth for a in answered}):
        level = [a for a in answered if a.turn.depth == depth]
        rows = [tokenizer(a.prompt)["input_ids"] for a in level]
        for row in rows:
            best = min(max((common_prefix(row, s) for s in stored), default=0), len(row) - 1)
            reused, computed = reused + best, computed + len(row) - best
        stored += [row + a.generation.ids[:-1] for row, a in zip(rows, level)]
    return reused, computed


def test_the_cache_gives_the_same_conversations_and_prefills_only_new_tokens(calling_llama,
                                                                            tokenizer, tmp_path):
    trees = conversation_trees(PEOPLE, turns=4, branches=2, seed=0)
    db = {(p["name"], a): p[a] for p in PEOPLE for a in protocol.ATTRIBUTES}

    def tool(query: str) -> str:
        try:
            q = protocol.parse_query(query)
        except protocol.QueryError:
            return "ERROR: malformed query"
        return db.get((q.name, q.attribute), "ERROR: no such person")

    def run(**options):
        return run_conversations(calling_llama, tokenizer, trees, tool, max_new_tokens=8,
                                 batch_size=64, **options)

    plain = run()
    generations = [(a.prompt, a.generation.ids, a.generation.tool_calls, a.answer) for a in plain]
    # the model's turns are varied: tool calls spliced in, stopped and cut-off answers
    assert {len(a.generation.tool_calls) for a in plain} == {0, 1}
    assert {a.generation.finish for a in plain} == {"stop", "length"}
    reused, computed = oracle(tokenizer, plain)
    without = sum(len(tokenizer(a.prompt)["input_ids"]) for a in plain)
    assert reused + computed == without and computed < 0.5 * without
    for memory_mb in (None, 0.002):  # unbounded; ~2 KB: most of the tree paged out to disk
        with conversation_cache(calling_llama, memory_mb=memory_mb,
                                pages_under=tmp_path) as cache:
            cached = run(prefix_cache=cache)
            stats = cache.stats()
            folder = cache.tiers.folder
            paged_to = sorted(tmp_path.iterdir())
        assert [(a.prompt, a.generation.ids, a.generation.tool_calls, a.answer)
                for a in cached] == generations
        assert (stats["tokens_reused"], stats["tokens_computed"]) == (reused, computed)
        # one batch a level: the first level finds nothing, every later prompt its parent
        assert stats["lookups"] == len(trees)
        assert stats["hits"] == sum(t.depth > 1 for t in trees)
        if memory_mb is None:
            assert folder is None and stats["paged_out_bytes"] == {"host": 0}
        else:
            assert stats["budgets"]["host"] == int(0.002 * 2**20)
            assert stats["bytes"]["host"] <= stats["budgets"]["host"] < stats["bytes"]["disk"]
            assert stats["paged_out_bytes"]["host"] > stats["paged_in_bytes"]["host"] > 0
            # the pages went to a folder of the cache's own under the run folder given ...
            assert folder.parent.parent == tmp_path and paged_to == [folder.parent]
            assert not folder.parent.exists()  # ... gone with the cache
    with conversation_cache(calling_llama, enabled=False) as cache:
        assert cache is None


def test_the_eval_reports_the_cache_counters_beside_the_same_accuracy(calling_llama, tokenizer,
                                                                     tiny_world):
    params = {"conversations": 3, "conversation_turns": 3, "conversation_branches": 1,
              "max_new_tokens": 8}
    with PeopleDB(tiny_world / "people.duckdb") as db:
        people = db.people("heldout")[:3]
        cached = score_conversations(calling_llama, tokenizer, "heldout", people, db,
                                     EvalParams(**params))
        paged = score_conversations(calling_llama, tokenizer, "heldout", people, db,
                                    EvalParams(**params, conversation_cache_mb=0.001))
        plain = score_conversations(calling_llama, tokenizer, "heldout", people, db,
                                    EvalParams(**params, conversation_cache=False))
        trees = conversation_trees(people, 3, 1, seed=0)
        answered = run_conversations(calling_llama, tokenizer, trees, db.answer, 8)
    accuracy = [r for r in plain if r["metric"] == "conversation_accuracy"]
    assert accuracy and len(plain) == len(accuracy)  # no cache, no counters
    reused, computed = oracle(tokenizer, answered)
    prompts = reused + computed
    for records in (cached, paged):
        assert [r for r in records if r["metric"] == "conversation_accuracy"] == accuracy
        counters = {r["metric"]: r for r in records if r["metric"].startswith("prefix_cache_")}
        assert list(counters) == list(CACHE_METRICS)
        assert all(r["split"] == "heldout" and r["attribute"] is None for r in counters.values())
        assert counters["prefix_cache_hit_rate"]["value"] == 9 / 12  # depth 1 misses: 3 of 12
        assert counters["prefix_cache_hit_rate"]["n"] == 12
        assert (counters["prefix_cache_tokens_reused"]["value"],
                counters["prefix_cache_tokens_computed"]["value"]) == (reused, computed)
        assert counters["prefix_cache_tokens_reused"]["n"] == prompts
    paged_counters = {r["metric"]: r["value"] for r in paged}
    assert paged_counters["prefix_cache_paged_out_bytes"] > 0
    assert paged_counters["prefix_cache_paged_in_bytes"] > 0
    assert {r["metric"]: r["value"] for r in cached}["prefix_cache_paged_out_bytes"] == 0
    # the counters describe the eval's work, not the model: evals.jsonl only, not the headline
    assert headline(cached) == headline(plain) == {
        "conversation_accuracy_heldout": round(accuracy[0]["value"], 6)}
