"""The recurrent prefix cache (lmpipe/eval/recurrent_prefix_cache.py) on Mamba, Mamba-2 and Hawk: a
finished row's state frozen at its last fed token, lookups that use only snapshots at node ends
the prompt matches whole (never a split node's head), logits equal to computing each prompt whole
on a conversation tree with tool-call splices (unbounded, and with every snapshot paged out to
disk and back), the exact reuse an oracle expects, greedy generation with a tool, conversations
and the chat giving the same tokens with and without the cache."""

import io

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.eval.commands import chat
from lmpipe.eval.conversations import (
    conversation_cache,
    conversation_trees,
    run_conversations,
)
from lmpipe.eval.decoders import decoder_for
from lmpipe.eval.generate import Sampling, generate
from lmpipe.eval.prefix_cache import PrefixCache
from lmpipe.eval.recurrent_prefix_cache import RecurrentPrefixCache, prefix_cache_for
from tests.eval.cache_checks import left_padded
from tests.eval.cache_checks import within_budgets as shared_checks
from tests.eval.test_chat import Ascii
from tests.eval.test_generate_archs import random_model
from tests.eval.tiny_models import noisy_llama, steered

ARCHS = ["mamba", "mamba2", "hawk"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    """Noise on every weight: a fresh Hawk's biases are zero and a fresh model's logits all near
    zero, which would hide a wrong state."""
    return random_model(request.param, noise=0.2)


# -- the decoders: a finished row keeps its state ------------------------------------------------


def test_a_finished_row_keeps_the_state_after_its_last_fed_token(model):
    generator = torch.Generator().manual_seed(4)
    rows = [torch.randint(0, 256, (n,), generator=generator).tolist() for n in (5, 8, 3)]
    steps = torch.randint(0, 256, (3, 6), generator=generator)
    decoder = decoder_for(model)
    with torch.no_grad():
        decoder.prefill(*left_padded(rows, 0))
        for t in range(steps.shape[1]):
            live = torch.tensor([t < 2, True, t < 4])  # rows 0 and 2 finish, fed pads after
            decoder.step(torch.where(live, steps[:, t], 0), live)
        finished = decoder.states()
        for row, fed in ((0, 2), (2, 4)):  # the state of the row's tokens computed alone
            alone = decoder_for(model)
            tokens = rows[row] + steps[row, :fed].tolist()
            alone.prefill(torch.tensor([tokens]), torch.ones((1, len(tokens)), dtype=torch.long))
            for got, expected in zip(finished, alone.states(), strict=True):
                assert (got[row] - expected[0]).abs().max().item() <= 1e-5
        assert decoder.next_position.tolist() == [7, 14, 7]
        # and a decoder set to those states goes on as the batch would have
        resumed = decoder_for(model)
        resumed.set_states([s[[0]] for s in finished], torch.tensor([7]))
        logits = resumed.step(torch.tensor([42]), torch.tensor([True]))
        whole = model(input_ids=torch.tensor([rows[0] + steps[0, :2].tolist() + [42]]))
        assert (logits[0] - whole.logits[0, -1]).abs().max().item() <= 1e-5


# -- lookups -------------------------------------------------------------------------------------


def test_a_lookup_uses_only_snapshots_at_node_ends_it_matches_whole(model):
    cache = RecurrentPrefixCache(model)

    def marker(value: int) -> torch.Tensor:
        return torch.full((8,), value, dtype=torch.uint8)

    def found(tokens: list[int]) -> tuple[int, int | None]:
        length, data = cache.lookup(tokens)
        return length, None if data is None else int(data[0])

    cache.insert([1, 2, 3, 4, 5], marker(1))
    cache.insert([1, 2, 3, 9], marker(2))  # splits (1, 2, 3 | 4, 5): the head has no state
    shape = {n.tokens: (n.payload is not None) for n in cache.tree.nodes()}
    assert shape == {(1, 2, 3): False, (4, 5): True, (9,): True}
    assert found([1, 2, 3, 7, 7]) == (0, None)  # the split head, matched whole: no state
    assert found([1, 2, 3, 4, 5, 6]) == (5, 1)
    assert found([1, 2, 3, 4, 5]) == (0, None)  # the last token is computed: (4, 5) half used
    assert found([1, 2, 3, 4, 7]) == (0, None)  # leaves (4, 5) midway: its state is not ours
    cache.insert([1, 2], marker(3))  # splits the head again, this time where a sequence ended
    assert found([1, 2, 3, 7]) == (2, 3)  # (1, 2) has a state; the new head (3,) has none
    assert found([1, 2, 3, 9, 8]) == (4, 2)  # the deepest snapshot of the path
    cache.insert([1, 2, 3], marker(4))  # a sequence ends at the snapshot-less node: it gets one
    assert found([1, 2, 3, 7]) == (3, 4)
    cache.insert([1, 2, 3], marker(5))  # already there: kept (the same tokens, the same state)
    assert found([1, 2, 3, 7]) == (3, 4)
    stats = cache.stats()
    assert (stats["lookups"], stats["hits"], stats["snapshots"]) == (8, 5, 4)
    assert stats["bytes"] == {"host": 4 * 8}


# -- a conversation tree, prefill by prefill -----------------------------------------------------


def follow(before: str, reply: str, attribute: str, name: str = "Al Bo") -> str:
    return before + reply + protocol.ask(attribute, name)


def tool_reply(attribute: str, answer: str) -> str:
    """A reply with a tool call, the database's turn spliced in, then the answer."""
    return protocol.tool_round(attribute, "Al Bo", answer)


A1 = protocol.prompt("birth_city", "Al Bo", with_tool=True)
Z1 = protocol.prompt("major", "Zoe Young", with_tool=False)
N1 = protocol.prompt("employer", "Bo Al", with_tool=True)  # shares A1's head, ends no sequence
R1, R2, RB = tool_reply("birth_city", "Paris"), tool_reply("major", "Law"), "MIT" + protocol.END
A2 = follow(A1, R1, "major")
A2B = follow(A1, R1, "university")  # a branch: from the same snapshot as A2
Z2 = follow(Z1, "Law" + protocol.END, "employer", "Zoe Young")
# forks five tokens into A2's stored reply: only A2's prompt, before it, ends with a state (the
# snapshot its prefill left)
FORK = A2 + protocol.CALL + "FINDw"
# (prompt, the reply fed after it) by level; a later prompt goes on from an earlier one's reply
LEVELS = [[(A1, R1), (Z1, "Law" + protocol.END)],
          [(A2, R2), (N1, "Hm"), (A2B, RB), (Z2, "Acme" + protocol.END)],
          [(follow(A2, R2, "employer"), "X"), (FORK, "Hm"), (follow(A2B, RB, "major"), "Art"),
           (Z2 + "Acme" + protocol.END + "Hm", "!")]]


def stored_prefix(row: list[int], stored: list[list[int]]) -> int:
    """The longest stored sequence that `row` begins with, short of its last token: the exact
    reuse of a cache with a snapshot at every stored sequence's end (each prompt, and each
    prompt with the tokens fed after it)."""
    return max((len(s) for s in stored if len(s) < len(row) and row[:len(s)] == s), default=0)


def run_levels(model, tokenizer, cache: RecurrentPrefixCache) -> tuple[int, int, int, int]:
    """Every level prefilled and decoded (its replies fed a token a step, row 0 finishing a
    token early) without the cache and with it, logits compared to 1e-5 at every step, each
    prompt stored after the prefill and each row after its replies; returns the (reused,
    computed) prefill tokens, the hits and the distinct stored sequences the oracle expects.
    Runs one decoder after the other: Hawk keeps its state in the model's modules."""
    stored: list[list[int]] = []
    reused = computed = hits = 0
    for level in LEVELS:
        rows = [tokenizer(p)["input_ids"] for p, _ in level]
        replies = [tokenizer(r, add_special_tokens=False)["input_ids"] for _, r in level]
        fed = [r[:-1] if i == 0 else r for i, r in enumerate(replies)]  # row 0 stops early
        for row in rows:
            best = stored_prefix(row, stored)
            reused, computed, hits = reused + best, computed + len(row) - best, hits + bool(best)
        stored += rows  # the prompts' snapshots, after the level's lookups
        ids, mask = left_padded(rows, tokenizer.pad_token_id)
        width = max(map(len, replies))

        def decode(decoder, logits, fed=fed, width=width):
            out = [logits]
            for t in range(width):
                live = torch.tensor([t < len(f) for f in fed])
                tokens = torch.tensor([f[t] if t < len(f) else tokenizer.pad_token_id
                                       for f in fed])
                out.append(torch.where(live[:, None], decoder.step(tokens, live), 0))
            return out

        with torch.no_grad():
            plain = decoder_for(model)
            expected = decode(plain, plain.prefill(ids, mask))
            positions = plain.next_position.tolist()
            decoder, logits = cache.prefill(model, ids, mask)
            got = decode(decoder, logits)
        for e, g in zip(expected, got, strict=True):
            assert (e - g).abs().max().item() <= 1e-5
        assert decoder.next_position.tolist() == positions
        cache.insert_batch(decoder, ids, mask, fed)
        stored += [row + f for row, f in zip(rows, fed)]
        within_budgets(cache)
    return reused, computed, hits, len({tuple(s) for s in stored})


def within_budgets(cache: RecurrentPrefixCache) -> None:
    shared_checks(cache)
    # every leaf ends a stored sequence: a branch with no state would be pruned
    assert all(n.payload is not None for n in cache.tree.nodes() if not n.children)


def test_cached_prefill_equals_the_whole_prompt_on_a_conversation_tree(model, tokenizer):
    cache = prefix_cache_for(model)
    assert isinstance(cache, RecurrentPrefixCache)
    reused, computed, hits, sequences = run_levels(model, tokenizer, cache)
    stats = cache.stats()
    assert (stats["tokens_reused"], stats["tokens_computed"]) == (reused, computed)
    # A2, A2B, Z2 at level 2 (not N1); A3, FORK (A2's prompt), A2B's follow-up, Z2 + "Hm"
    assert (stats["lookups"], stats["hits"]) == (10, hits) and hits == 7
    assert reused > computed
    # FORK goes on from A2's prompt, not from the split it made in A2's reply (no state there)
    split = [n for n in cache.tree.nodes() if n.payload is None and n.children]
    assert split and cache.lookup(tokenizer(FORK)["input_ids"])[0] == len(
        tokenizer(A2)["input_ids"])
    assert stats["snapshots"] == sequences and stats["nodes_evicted"] == 0
    assert stats["paged_out_bytes"] == {"host": 0}
    # a snapshot is one row's state of every layer, whatever its tokens
    decoder = decoder_for(model)
    with torch.no_grad():
        decoder.prefill(torch.tensor([[1, 2]]), torch.ones((1, 2), dtype=torch.long))
    row = sum(s.numel() * s.element_size() for s in decoder.states())
    assert stats["bytes"]["host"] == stats["snapshots"] * row


def test_every_snapshot_paged_out_to_disk_and_back(model, tokenizer, tmp_path):
    cache = RecurrentPrefixCache(model, budgets={"host": 1}, directory=tmp_path)
    reused, computed, _, _ = run_levels(model, tokenizer, cache)
    stats = cache.stats()
    assert (stats["tokens_reused"], stats["tokens_computed"]) == (reused, computed)
    assert stats["bytes"]["host"] == 0 and stats["bytes"]["disk"] > 0
    # every hit read its snapshot back from disk
    snapshot = stats["bytes"]["disk"] // stats["snapshots"]
    assert stats["paged_in_bytes"]["host"] == stats["hits"] * snapshot
    assert stats["paged_out_bytes"]["host"] == (stats["snapshots"] + stats["hits"]) * snapshot
    assert stats["disk_written_bytes"] == stats["bytes"]["disk"]  # a page read back kept its file
    cache.close()
    assert not cache.tiers.folder.exists()


def test_a_full_last_tier_drops_the_least_recently_used_snapshots(model, tokenizer):
    probe = RecurrentPrefixCache(model)
    run_levels(model, tokenizer, probe)
    snapshot = probe.stats()["bytes"]["host"] // probe.stats()["snapshots"]
    cache = RecurrentPrefixCache(model, budgets={"host": 3 * snapshot})
    reused, _, _, _ = run_levels(model, tokenizer, cache)  # still equal logits
    stats = cache.stats()
    assert stats["snapshots"] == 3
    # every other snapshot went (one dropped before a later row stored it again goes twice)
    assert stats["nodes_evicted"] >= probe.stats()["snapshots"] - 3
    assert 0 < stats["tokens_reused"] < reused


# -- generation ----------------------------------------------------------------------------------


def test_greedy_generation_with_a_tool_is_the_same_with_the_cache(model, tokenizer):
    # "~" makes the model write the query "?" (a tool call), then it goes on freely
    steer = steered(Ascii(model), tokenizer, {"~": protocol.CALL, protocol.CALL: "?",
                                       "?": protocol.END})
    cache = prefix_cache_for(steer)
    greedy = Sampling(max_new_tokens=6)

    def tool(query: str) -> str:
        return f"{len(query)} found"

    first = [A1 + "~", Z1, A2 + "~"]
    plain = generate(steer, tokenizer, first, greedy, tool=tool, batch_size=2)
    cached = generate(steer, tokenizer, first, greedy, tool=tool, batch_size=2, prefix_cache=cache)
    assert [(g.ids, g.tool_calls) for g in cached] == [(g.ids, g.tool_calls) for g in plain]
    assert plain[0].tool_calls == [("?", "1 found")] and len(plain[0].turn_starts) == 2
    second = [follow(p + g.text(tokenizer), "", "major") + "~" for p, g in zip(first, plain)]
    before = cache.stats()
    plain2 = generate(steer, tokenizer, second, greedy, tool=tool, batch_size=4)
    cached2 = generate(steer, tokenizer, second, greedy, tool=tool, batch_size=4,
                       prefix_cache=cache)
    assert [(g.ids, g.tool_calls) for g in cached2] == [(g.ids, g.tool_calls) for g in plain2]
    stats = cache.stats()
    # each continuing row starts from the state after everything its first turn fed
    stored = [tokenizer(p)["input_ids"] + g.ids[:-1] for p, g in zip(first, plain)]
    rows = [tokenizer(p)["input_ids"] for p in second]
    assert stats["tokens_reused"] - before["tokens_reused"] == \
        sum(stored_prefix(row, stored) for row in rows) > 0
    assert stats["tokens_computed"] - before["tokens_computed"] < sum(map(len, rows)) / 2


def test_conversations_and_the_chat_are_the_same_with_the_cache(model, tokenizer):
    model = Ascii(model)  # a reply decodes to the tokens it was: the next prompt goes on from them
    people = [{"name": f"Person {c}", **{a: f"{a}-{c}" for a in protocol.ATTRIBUTES}}
              for c in "AB"]
    trees = conversation_trees(people, turns=3, branches=1, seed=0)

    def tool(query: str) -> str:
        return "ERROR: malformed query"

    def run(**options):
        return [(a.prompt, a.generation.ids, a.answer) for a in run_conversations(
            model, tokenizer, trees, tool, max_new_tokens=5, batch_size=16, **options)]

    plain = run()
    for memory_mb in (None, 1e-6):  # unbounded; one byte: every snapshot paged out and back
        with conversation_cache(model, memory_mb=memory_mb) as cache:
            assert isinstance(cache, RecurrentPrefixCache)
            assert run(prefix_cache=cache) == plain
            stats = cache.stats()
        assert stats["hits"] == sum(t.depth > 1 for t in trees)
        assert stats["tokens_computed"] < stats["tokens_reused"]
        if memory_mb is not None:
            assert stats["paged_in_bytes"]["host"] > 0
    lines = "Where was Al Bo born?\nWhat did he study?\n"
    out_cached, out_plain = io.StringIO(), io.StringIO()
    cached, cache = chat(model, tokenizer, io.StringIO(lines), out_cached, Sampling(8))
    plain_turns, _ = chat(model, tokenizer, io.StringIO(lines), out_plain, Sampling(8),
                          prefix_cache=False)
    assert [g.ids for g in cached] == [g.ids for g in plain_turns]
    assert isinstance(cache, RecurrentPrefixCache) and cache.stats()["hits"] == 1
    assert out_cached.getvalue().splitlines()[-1].startswith(
        "prefix cache: 1 of 2 turns reused a prefix")


def test_each_model_gets_the_cache_it_needs(model):
    assert isinstance(prefix_cache_for(noisy_llama(max_seq_len=64)), PrefixCache)
    with pytest.raises(ValueError, match="keeps a recurrent state.*prefix_cache_for"):
        PrefixCache(model)
    with pytest.raises(ValueError, match="no state snapshots of model type 'llama'.*PrefixCache"):
        RecurrentPrefixCache(noisy_llama(max_seq_len=64))
