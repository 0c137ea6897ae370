"""The prefix-tree cache (lmpipe/eval/prefix_cache.py): the radix tree's splits and lookups, logits
equal to recomputing the whole prompt on a conversation tree (under budgets that page every node
out to disk and back, or evict), batches mixing rows that share prefixes with rows that do not,
greedy generation with a tool giving the same tokens with and without the cache, and the refusal
of recurrent models."""

import itertools

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.decoders import AttentionDecoder
from lmpipe.eval.generate import Sampling, generate
from lmpipe.eval.kv_buffer import BufferLayer, Workspace
from lmpipe.eval.kv_tiers import PAGES_FILE
from lmpipe.eval.prefix_cache import PrefixCache
from lmpipe.eval.prefix_tree import RadixTree
from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from tests.eval.cache_checks import left_padded, within_budgets
from tests.eval.tiny_models import noisy_llama, steered

# -- the radix tree ------------------------------------------------------------------------------


def shape(node) -> dict:
    return {node_.tokens: shape(node_) for node_ in node.children.values()}


def test_radix_tree_inserts_split_nodes_and_match_finds_the_longest_prefix():
    tree = RadixTree(lambda payload, k: (payload[:k], payload[k:]))

    def insert(seq):
        return tree.insert(seq, lambda start: list(seq[start:]))  # payload: the span's tokens

    insert([1, 2, 3, 4])
    assert shape(tree.root) == {(1, 2, 3, 4): {}}
    path = insert([1, 2, 5])
    assert shape(tree.root) == {(1, 2): {(3, 4): {}, (5,): {}}}
    assert [n.tokens for n in path] == [(1, 2), (5,)]
    tree.insert([1, 2], lambda start: pytest.fail("nothing new to store"))
    insert([1])
    insert([7, 8])
    assert shape(tree.root) == {(1,): {(2,): {(3, 4): {}, (5,): {}}}, (7, 8): {}}
    # every split kept each node's payload aligned with its own span
    assert all(n.payload == list(n.tokens) for n in tree.nodes())

    path, length = tree.match([1, 2, 3, 9])
    assert [(n.tokens, used) for n, used in path] == [((1,), 1), ((2,), 1), ((3, 4), 1)]
    assert length == 3
    path, length = tree.match([1, 2, 6])
    assert [n.tokens for n, _ in path] == [(1,), (2,)] and length == 2
    assert tree.match([8]) == ([], 0)
    # a lookup stamps exactly its path: (1), (2), (3, 4) and (1), (2) were used last
    stamps = {n.tokens: n.last_used for n in tree.nodes()}
    assert stamps[(1,)] == stamps[(2,)] == tree.clock - 1
    assert stamps[(3, 4)] == tree.clock - 2 and stamps[(5,)] < stamps[(3, 4)]


# -- a tiny llama and a conversation tree ------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    """Two layers, grouped-query attention, noise on every weight: logits of order 1, so a wrong
    position or a wrong key shows far above 1e-5 (a fresh model's logits are all near zero)."""
    return noisy_llama(max_seq_len=256, noise=0.1, seed=1)


def follow(prompt: str, answer: str, attribute: str, name: str = "Al Bo") -> str:
    """The next turn of a conversation: the model's answer, then a new question."""
    question = protocol.turn(protocol.USER, protocol.question(attribute, name))
    return f"{prompt}{answer}{protocol.END}{question}{protocol.ASSISTANT}"


T1 = protocol.prompt("birth_city", "Al Bo", with_tool=True)
T2 = follow(T1, "Paris", "major")
T3 = follow(T2, "Law", "employer")
T4 = follow(T3, "Acme", "university")
# branches: the same answer then another question (the tree splits after "Law<|end|><|user|>"),
# another answer (it splits where the answer begins), a follow-up of a later turn
B2A = follow(T2, "Law", "birth_date")
B2B = follow(T2, "Art", "employer_city")
B3 = follow(T3, "Acme", "employer_city")
OTHER = protocol.prompt("major", "Zoe Young", with_tool=False)
LEVELS = [[T1], [T2], [T3, B2A, B2B], [OTHER, T4, B3, protocol.prompt("major", "Al Bo", True)]]
STEPS = "ok!"  # fed after each prefill, as a generated continuation would be


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run_levels(model, tokenizer, cache: PrefixCache, levels: list[list[str]]) -> tuple[int, int]:
    """Every batch prefilled and decoded a few steps with and without the cache, logits compared
    to 1e-5, each row stored afterwards; returns the (reused, computed) prefill tokens an exact
    longest-common-prefix oracle expects."""
    steps = tokenizer(STEPS, add_special_tokens=False)["input_ids"]
    stored: list[list[int]] = []
    reused = computed = 0
    for level in levels:
        rows = [tokenizer(p)["input_ids"] for p in level]
        for row in rows:
            best = max((common_prefix(row, s) for s in stored), default=0)
            best = min(best, len(row) - 1)  # the last token is always computed
            reused, computed = reused + best, computed + len(row) - best
        ids, mask = left_padded(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            whole = AttentionDecoder(model)
            expected = [whole.prefill(ids, mask)]
            decoder, logits = cache.prefill(model, ids, mask)
            got = [logits]
            for t, token in enumerate(steps):
                live = torch.ones(len(rows), dtype=torch.bool)
                tokens = torch.full((len(rows),), token)
                if t == len(steps) - 1 and len(rows) > 1:  # row 0 finished: a pad, masked
                    live[0], tokens[0] = False, tokenizer.pad_token_id
                expected.append(whole.step(tokens, live))
                got.append(decoder.step(tokens, live))
        for e, g in zip(expected, got):
            assert (e - g).abs().max().item() <= 1e-5
        assert decoder.next_position.tolist() == whole.next_position.tolist()
        fed = [steps[:-1] if r == 0 and len(rows) > 1 else steps for r in range(len(rows))]
        cache.insert_batch(decoder, ids, mask, fed)
        stored += [row + f for row, f in zip(rows, fed)]
        within_budgets(cache)
    return reused, computed


def disk_ranges(cache: PrefixCache) -> list[tuple[int, int]]:
    """(offset, bytes) of every page with a disk copy, checked to be disjoint and inside the
    pages file, whose size the tiers report."""
    ranges = sorted((n.payload.offset, n.payload.nbytes) for n in cache.tree.nodes()
                    if n.payload.offset is not None)
    for (start, size), (after, _) in itertools.pairwise(ranges):
        assert start + size <= after
    size = (cache.tiers.folder / PAGES_FILE).stat().st_size
    assert size == cache.tiers.disk_pages() and (not ranges or sum(ranges[-1]) <= size)
    return ranges


def test_cached_prefill_equals_the_whole_prompt_on_a_conversation_tree(llama, tokenizer):
    cache = PrefixCache(llama)
    reused, computed = run_levels(llama, tokenizer, cache, LEVELS)
    stats = cache.stats()
    assert (stats["tokens_reused"], stats["tokens_computed"]) == (reused, computed)
    assert stats["lookups"] == 9 and stats["hits"] == 8  # every prompt but the first shares BOS..
    assert reused > computed  # the later turns reuse most of their prompts
    assert stats["paged_out_bytes"] == {"host": 0} and stats["nodes_evicted"] == 0
    # every stored token once: the tree shares the prefixes instead of copying them
    kv_bytes_per_token = 2 * 2 * 1 * 8 * 4  # layers, K and V, kv heads, head width, float32
    assert stats["bytes"]["host"] == stats["tokens"] * kv_bytes_per_token


def test_uninitialized_batch_buffers_are_overwritten_and_never_kept_by_the_cache(llama, tokenizer, monkeypatch):
    # the batch cache's buffers are uninitialized (fresh memory, or the workspace an earlier
    # batch left): poison them, as garbage may be, and the masked slots before each shorter
    # prefix must still be written (NaN survives any mask), and nothing past the filled
    # positions read
    allocate, take = BufferLayer.allocate, Workspace.take

    def poisoned_allocate(self, *args, **kwargs):
        keys, values = allocate(self, *args, **kwargs)
        keys.fill_(float("nan"))
        values.fill_(float("nan"))
        return keys, values

    def poisoned_take(self, *args, **kwargs):
        return take(self, *args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(BufferLayer, "allocate", poisoned_allocate)
    monkeypatch.setattr(Workspace, "take", poisoned_take)
    # one workspace throughout (never outgrown): a stored KV that still viewed it would be
    # poisoned by the next batch's take
    monkeypatch.setattr(Workspace, "HEADROOM", 1000)
    cache = PrefixCache(llama)
    run_levels(llama, tokenizer, cache, LEVELS)  # its prefixes differ in length in a batch


def test_a_row_that_misses_beside_rows_that_hit(llama, tokenizer):
    cache = PrefixCache(llama)
    run_levels(llama, tokenizer, cache, LEVELS[:2])
    # without its BOS, OTHER shares no first token with anything stored
    rows = [tokenizer(T3)["input_ids"], tokenizer(OTHER, add_special_tokens=False)["input_ids"]]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    lookups, hits = cache.lookups, cache.hits
    with torch.no_grad():
        expected = AttentionDecoder(llama).prefill(ids, mask)
        _, got = cache.prefill(llama, ids, mask)
    assert (cache.lookups - lookups, cache.hits - hits) == (2, 1)
    assert (expected - got).abs().max().item() <= 1e-5


def test_a_budget_that_pages_every_node_out_to_disk_and_back(llama, tokenizer, tmp_path):
    cache = PrefixCache(llama, budgets={"host": 1}, directory=tmp_path)
    reused, computed = run_levels(llama, tokenizer, cache, LEVELS)
    stats = cache.stats()
    # nothing is lost on disk: the reuse is the unbounded cache's
    assert (stats["tokens_reused"], stats["tokens_computed"]) == (reused, computed)
    assert stats["bytes"]["host"] == 0 and stats["bytes"]["disk"] > 0
    assert stats["paged_out_bytes"]["host"] > stats["paged_in_bytes"]["host"] > 0
    # pages go back down row by row: host memory never held more than one row's KV
    longest = max(len(tokenizer(p)["input_ids"]) for level in LEVELS for p in level) + len(STEPS)
    assert 0 < stats["peak_bytes"]["host"] <= longest * 2 * 2 * 8 * 4
    ranges = disk_ranges(cache)
    assert len(ranges) == stats["nodes"]  # one copy a node, nothing left behind by page-ins
    assert sum(n for _, n in ranges) == stats["bytes"]["disk"]
    assert [p.name for p in cache.tiers.folder.iterdir()] == [PAGES_FILE]
    cache.clear()
    assert cache.stats()["nodes"] == 0 and cache.stats()["bytes"] == {"host": 0, "disk": 0}
    assert not list(cache.tiers.folder.iterdir())
    run_levels(llama, tokenizer, cache, LEVELS[:2])  # usable again, from empty
    assert cache.stats()["hits"] == stats["hits"] + 1
    cache.close()
    assert not cache.tiers.folder.exists()
    with pytest.raises(ValueError, match="budgets.*'host': -1"):
        PrefixCache(llama, budgets={"host": -1})
    with pytest.raises(ValueError, match=r"unknown tier\(s\) \['device'\]"):
        PrefixCache(llama, budgets={"device": 10})  # no device tier on CPU unless asked


def test_three_tiers_page_device_to_host_to_disk(llama, tokenizer, tmp_path):
    node = 2 * 2 * 8 * 4  # bytes of one token's KV
    cache = PrefixCache(llama, budgets={"device": 40 * node, "host": 60 * node},
                        directory=tmp_path, device_tier=True)  # "device" is the CPU here
    reused, computed = run_levels(llama, tokenizer, cache, LEVELS)
    stats = cache.stats()
    assert (stats["tokens_reused"], stats["tokens_computed"]) == (reused, computed)
    for tier in ("device", "host"):
        assert stats["paged_out_bytes"][tier] > 0 and stats["paged_in_bytes"][tier] > 0, stats


@pytest.mark.parametrize("disk", [False, True])
def test_a_full_last_tier_evicts_leaves_and_stays_correct(llama, tokenizer, tmp_path, disk):
    budget = 2 * 2 * 8 * 4 * 60  # 60 tokens of KV
    budgets = {"host": 1, "disk": budget} if disk else {"host": budget}
    cache = PrefixCache(llama, budgets=budgets, directory=tmp_path if disk else None)
    reused, _ = run_levels(llama, tokenizer, cache, LEVELS)
    stats = cache.stats()
    last = "disk" if disk else "host"
    assert stats["nodes_evicted"] > 0 and 0 < stats["bytes"][last] <= budget
    assert 0 < stats["tokens_reused"] < reused  # evicted prefixes are computed again
    if disk:  # the pages on disk are the disk tier's bytes; evicted ones left reusable holes
        ranges = disk_ranges(cache)
        assert sum(n for _, n in ranges) == stats["bytes"]["disk"]
        assert cache.tiers.disk_pages() > stats["bytes"]["disk"]


def test_a_batch_mixes_rows_that_share_prefixes_with_rows_that_share_none(llama, tokenizer):
    cache = PrefixCache(llama)
    fresh = [protocol.prompt("employer", "Zoe Young", False), "Hi", "Hello there"]
    # interleaved: a hit, a miss, a hit inside a node, a miss sharing only BOS with the
    # others, a shorter hit; the two "H" rows share a prefix no one has stored yet
    batch = [T3, fresh[0], B2B, fresh[1], T2 + "Pa", fresh[2]]
    reused, computed = run_levels(llama, tokenizer, cache, [[T2], batch])
    stats = cache.stats()
    assert stats["hits"] == 6  # BOS at least, for every row of the batch
    assert stats["tokens_reused"] == reused and stats["tokens_computed"] == computed


def test_lru_pages_the_least_recently_used_leaf_out_first(llama, tmp_path):
    token = 2 * 2 * 8 * 4
    cache = PrefixCache(llama, budgets={"host": 5 * token}, directory=tmp_path)

    def kv(seq):
        return lambda start: torch.full((2, 2, 1, len(seq) - start, 8), float(seq[start]))

    for seq in ([1, 2, 3], [4, 5], [1, 2, 3, 6, 7]):
        cache.insert(seq, kv(seq))
        cache.enforce_budgets()
    tier = {n.tokens: n.payload.tier for n in cache.tree.nodes()}
    # 7 tokens for a 5-token budget: [4, 5] is the oldest; the path 1 2 3 | 6 7 was used last
    assert tier == {(1, 2, 3): "host", (6, 7): "host", (4, 5): "disk"}
    cache.insert([9, 9, 9], kv([9, 9, 9]))
    cache.enforce_budgets()
    # the path's leaf goes before its parent, which the leaf needs
    tier = {n.tokens: n.payload.tier for n in cache.tree.nodes()}
    assert tier == {(1, 2, 3): "disk", (6, 7): "disk", (4, 5): "disk", (9, 9, 9): "host"}
    assert cache.stats()["paged_out_bytes"]["host"] == 7 * token
    [part] = cache.lookup([4, 5, 0])  # read back from disk
    assert part.flatten().unique().tolist() == [4.0]
    cache.enforce_budgets()
    tier = {n.tokens: n.payload.tier for n in cache.tree.nodes()}
    assert tier[(4, 5)] == "host" and tier[(9, 9, 9)] == "host"
    assert cache.stats()["paged_in_bytes"]["host"] == 2 * token
    # (4, 5) kept its file: now the least recently used, it goes down again without a write
    written = cache.stats()["disk_written_bytes"]
    assert written == 7 * token
    cache.lookup([9, 9, 9, 0])
    cache.insert([8, 8], kv([8, 8]))
    cache.enforce_budgets()
    tier = {n.tokens: n.payload.tier for n in cache.tree.nodes()}
    assert tier[(4, 5)] == "disk" and tier[(9, 9, 9)] == tier[(8, 8)] == "host"
    assert cache.stats()["paged_out_bytes"]["host"] == 9 * token
    assert cache.stats()["disk_written_bytes"] == written
    assert cache.stats()["bytes"] == {"host": 5 * token, "disk": 7 * token}


# -- generation ----------------------------------------------------------------------------------


def test_greedy_generation_with_a_tool_is_the_same_with_the_cache(llama, tokenizer, tiny_world):
    # writes the tool query "?" after "~" (a tool call), then goes on freely
    model = steered(llama, tokenizer, {"~": protocol.CALL, protocol.CALL: "?", "?": protocol.END})
    cache = PrefixCache(model)
    greedy = Sampling(max_new_tokens=6)
    with PeopleDB(tiny_world / "people.duckdb") as db:
        first = [T1 + "~", OTHER, T2 + "~"]
        plain = generate(model, tokenizer, first, greedy, tool=db.answer, batch_size=2)
        cached = generate(model, tokenizer, first, greedy, tool=db.answer, batch_size=2,
                          prefix_cache=cache)
        assert [(g.ids, g.tool_calls) for g in cached] == [(g.ids, g.tool_calls) for g in plain]
        error = "ERROR: malformed query; expected 'FIND <attribute> FOR <name>'"
        assert plain[0].tool_calls == [("?", error)]
        # the second turn: each conversation goes on from everything the first one fed
        second = [follow(p + g.text(tokenizer), "", "major") + "~"
                  for p, g in zip(first, plain)] + [B2B]
        before = cache.stats()
        # within the first call, the second batch (T2) reused what the first stored (T1)
        assert (before["hits"], before["tokens_reused"]) == (1, len(tokenizer(T1)["input_ids"]))
        plain2 = generate(model, tokenizer, second, greedy, tool=db.answer, batch_size=4)
        cached2 = generate(model, tokenizer, second, greedy, tool=db.answer, batch_size=4,
                           prefix_cache=cache)
    assert [(g.ids, g.tool_calls) for g in cached2] == [(g.ids, g.tool_calls) for g in plain2]
    stats = cache.stats()
    assert stats["hits"] - before["hits"] == 4
    # each continuing row reuses its whole first turn but the token it never fed (its last)
    first_turns = sum(len(tokenizer(p)["input_ids"]) + len(g.ids) - 1
                      for p, g in zip(first, plain))
    # ... and the branch B2B reuses T2, which the third prompt of the first turn began with
    reused = first_turns + len(tokenizer(T2)["input_ids"])
    assert stats["tokens_reused"] - before["tokens_reused"] == reused
    assert len(plain2[0].tool_calls) == 1 and len(plain2[0].turn_starts) == 2  # spliced again


@pytest.mark.parametrize(("arch", "kind"), [("mamba", "mamba"), ("hawk", "recurrent_gemma")])
def test_recurrent_models_are_refused_by_name(arch, kind):
    model = build_model(ModelParams(arch=arch, d_model=16, n_layers=1, d_state=4,
                                    max_seq_len=64), seed=0)
    with pytest.raises(ValueError, match=f"model type '{kind}' \\(arch '{arch}'\\).*attention"):
        PrefixCache(model)
