"""`lmpipe generate --chat` without a prompt: an interactive chat whose turns grow one
conversation, answered with the tool, with a prefix cache kept between turns (each turn
prefills only its new tokens, the replies equal a run without the cache), '/stats' and the
counters at the end."""

import io
import itertools
import sys

import torch

from lmpipe.cli import main
from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.commands import chat
from lmpipe.eval.generate import Sampling
from lmpipe.model.build import save_model
from tests.eval.tiny_models import noisy_llama

LINES = "Where was Al Bo born?\n\nWhat did he study?\n/stats\nWho employs him?\n"




class Ascii(torch.nn.Module):
    """`model` kept to printable ASCII: a reply of invalid UTF-8 decodes to U+FFFD, which
    encodes to other bytes, and the next turn's prompt would no longer begin with the tokens fed;
    a control byte would split the transcript's lines."""

    def __init__(self, model) -> None:
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids=input_ids, **kwargs)
        out.logits[:, -1, :32] = -1e4  # the byte tokenizer's control and non-ASCII bytes
        out.logits[:, -1, 127:256] = -1e4
        return out


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_each_turn_reuses_the_conversation_so_far_and_replies_as_without_the_cache(
        tokenizer, tiny_world):
    model = Ascii(noisy_llama(max_seq_len=512, noise=0.5, seed=2))
    assert tokenizer.convert_tokens_to_ids(protocol.BOS) >= 256  # specials after the bytes
    greedy = Sampling(max_new_tokens=10)
    with PeopleDB(tiny_world / "people.duckdb") as db:
        cached_out, plain_out = io.StringIO(), io.StringIO()
        cached, cache = chat(model, tokenizer, io.StringIO(LINES), cached_out, greedy,
                             tool=db.answer)
        plain, none = chat(model, tokenizer, io.StringIO(LINES), plain_out, greedy,
                           tool=db.answer, prefix_cache=False)
    assert none is None and len(cached) == len(plain) == 3  # the empty line asks nothing
    assert [(g.ids, g.tool_calls) for g in cached] == [(g.ids, g.tool_calls) for g in plain]
    # each turn's prompt is the conversation so far: the head, then every earlier exchange
    head = protocol.head(True)
    assert cached[0].prompt == f"{head}{protocol.turn(protocol.USER, 'Where was Al Bo born?')}" \
                               f"{protocol.ASSISTANT}"
    for before, after in itertools.pairwise(cached):
        assert after.prompt.startswith(before.prompt + before.text(tokenizer))
    # the cache's reuse, turn by turn: the longest common prefix with what earlier turns fed
    # (their prompt and every generated token but the last), short of the prompt's last token
    stored, reused = [], []
    for g in cached:
        row = tokenizer(g.prompt)["input_ids"]
        reused.append(min(max((common_prefix(row, s) for s in stored), default=0), len(row) - 1))
        stored.append(row + g.ids[:-1])
    # each turn reuses everything the turn before fed: it prefills only the new user turn
    assert reused == [0] + [len(tokenizer(g.prompt)["input_ids"]) + len(g.ids) - 1
                            for g in cached[:-1]]
    stats = cache.stats()
    assert (stats["lookups"], stats["hits"]) == (3, 2)
    assert stats["tokens_reused"] == sum(reused)
    prompts = sum(len(tokenizer(g.prompt)["input_ids"]) for g in cached)
    assert stats["tokens_computed"] == prompts - sum(reused) < prompts / 2
    # the transcript: the replies streamed, '/stats' after turn 2, the counters at the end
    lines = cached_out.getvalue().splitlines()
    assert lines[:2] == [g.text(tokenizer) for g in cached[:2]] == plain_out.getvalue(
        ).splitlines()[:2]
    assert lines[2].startswith("prefix cache: 1 of 2 turns reused a prefix; prefill tokens "
                               f"reused {reused[1]:,}, computed ")
    assert lines[3] == cached[2].text(tokenizer)
    assert lines[4].startswith(f"prefix cache: 2 of 3 turns reused a prefix; prefill tokens "
                               f"reused {sum(reused):,}, computed {stats['tokens_computed']:,}")
    assert plain_out.getvalue().splitlines()[-1] == "prefix cache: off"


def test_lmpipe_generate_chat_reads_turns_from_stdin(tokenizer, tiny_world, tmp_path, capsys,
                                                     monkeypatch):
    model = noisy_llama(max_seq_len=512, noise=0.5, seed=2)
    save_model(model, tokenizer, tmp_path / "model")
    lines = "Where was Al Bo born?\nWhat did he study?\n/quit\nnever asked\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    main(["generate", str(tmp_path / "model"), "--chat", "--db",
          str(tiny_world / "people.duckdb"), "--temperature", "0", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    plain = io.StringIO()
    with PeopleDB(tiny_world / "people.duckdb") as db:
        expected, _ = chat(model, tokenizer, io.StringIO(lines), plain,
                           Sampling(max_new_tokens=8), tool=db.answer, prefix_cache=False)
    assert len(expected) == 2  # '/quit' stopped the chat
    # the streamed replies (token by token: a multi-byte character shows as U+FFFD) are those of
    # a run without the cache; then the counters
    replies, counters = out.rsplit("\n", 2)[0], out.rstrip("\n").rsplit("\n", 1)[1]
    assert replies == plain.getvalue().rsplit("\n", 2)[0] and replies.count("\n") >= 1
    assert counters.startswith("prefix cache: 1 of 2 turns reused a prefix")
