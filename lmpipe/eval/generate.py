"""Batched generation through the model's own cache, with sampling and database tool calls inside
the loop.

`generate` runs a whole batch in lockstep over the model's inference cache (Llama's KV cache,
Mamba's conv and SSM states, Hawk's recurrent state: lmpipe/eval/decoders.py): the prompts fill
it, then every step feeds each live sequence one token and advances its cache by one. A
token is either sampled (greedy, temperature, top-k, top-p, repetition penalty, seeded) or
*forced*: when a sequence finishes a tool query (an assistant turn `<|call|>QUERY<|end|>`, the
protocol in `lmpipe/core/protocol.py`), the query goes to the tool (a whitelist parser and bound
parameters on a read-only database, `lmpipe/data/tooldb.py`; a malformed query or unknown name gets
an `ERROR` reply, never an exception), and the database turn is queued as forced tokens for that
sequence only. The others keep sampling, so no sequence waits for another's tool call.

transformers' `generate` cannot splice text into one sequence of a batch mid-generation, hence
this loop; the sampling itself is transformers' logits processors. With a `prefix_cache`
(lmpipe/eval/prefix_cache.py: attention KV; lmpipe/eval/recurrent_prefix_cache.py: Mamba's and
Hawk's state snapshots) a prompt's prefill reuses what an earlier batch computed of its longest
cached prefix (the next turn of a conversation), and computes only the rest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.decoders import decoder_for
from lmpipe.eval.heap import frozen_heap
from lmpipe.eval.padding import left_padded

if TYPE_CHECKING:
    from lmpipe.eval.tree_cache import TreeCache

Tool = Callable[[str], str]  # a query the model wrote -> the database's reply
DROP_SHARE = 0.25  # the share of a batch's rows that, once finished, the loop drops


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens and when to stop. temperature 0 is greedy."""

    max_new_tokens: int = 48
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_strings: tuple[str, ...] = ()
    stop_tokens: tuple[str, ...] = ()  # extra stop tokens (END and EOS always stop)
    seed: int = 0

    def processors(self) -> LogitsProcessorList:
        chain = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            chain.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.temperature > 0:
            chain.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                chain.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                chain.append(TopPLogitsWarper(self.top_p))
        return chain


@dataclass
class Generation:
    """One prompt's continuation."""

    prompt: str
    ids: list[int] = field(default_factory=list)      # every token after the prompt, forced ones too
    turn_starts: list[int] = field(default_factory=lambda: [0])  # where each assistant turn begins
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (query, reply)
    sampled: int = 0                                   # tokens the model chose
    finish: str = "length"                             # stop | length

    def text(self, tokenizer) -> str:
        return tokenizer.decode(self.ids, skip_special_tokens=False)

    def last_turn(self, tokenizer) -> str:
        """The final assistant turn's text, without its END/EOS."""
        ids = self.ids[self.turn_starts[-1]:]
        return tokenizer.decode(ids, skip_special_tokens=False).split(protocol.END, 1)[0].split(
            protocol.EOS, 1)[0].replace(protocol.PAD, "")


class _Sequence:
    """Loop state of one sequence: its output, forced tokens, and where its turn began."""

    def __init__(self, prompt: str) -> None:
        self.out = Generation(prompt)
        self.forced: deque[int] = deque()
        self.done = False
        self.sampled_before_turn = 0


def _ids(tokenizer, tokens: list[str]) -> list[int]:
    return [i for i in tokenizer.convert_tokens_to_ids(tokens)
            if i is not None and i != tokenizer.unk_token_id]


def _left_padded(tokenizer, prompts: list[str], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the prompts, left-padded with `pad`. Padded here, not by the
    tokenizer: asking it to pad switches padding on in its backend, which the caller shares and
    a later `save_pretrained` would write into tokenizer.json. The tokenizer adds each prompt's
    BOS, as it does to every training document (lmpipe/core/protocol.py)."""
    return left_padded(tokenizer(prompts)["input_ids"], pad)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], sampling: Sampling = Sampling(),
             tool: Tool | None = None, batch_size: int = 32, max_tool_calls: int = 1,
             on_token: Callable[[int, str], None] | None = None,
             prefix_cache: TreeCache | None = None) -> list[Generation]:
    """Continue every prompt. Stops a sequence at EOS, at an assistant turn's END that is not a
    tool query (or every END when there is no tool), at a stop string, after
    `sampling.max_new_tokens` sampled tokens in one turn (a tool reply starts a new turn), or
    when the model's context is full. `on_token(row, text)` streams decoded tokens.
    `prefix_cache` (`prefix_cache_for(model)`, lmpipe/eval/recurrent_prefix_cache.py): each
    prompt's prefill reuses the longest cached prefix an earlier sequence computed, and each
    finished batch is stored in it."""
    results: list[Generation] = []
    generator = torch.Generator().manual_seed(sampling.seed)
    with frozen_heap():  # the collector walks only what the loop makes (lmpipe/eval/heap.py)
        for start in range(0, len(prompts), batch_size):
            results += _generate_batch(model, tokenizer, prompts[start:start + batch_size],
                                       sampling, tool, max_tool_calls, generator, on_token,
                                       prefix_cache)
    return results


def _generate_batch(model, tokenizer, prompts, sampling, tool, max_tool_calls, generator,
                    on_token, prefix_cache=None) -> list[Generation]:
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = _left_padded(tokenizer, prompts, pad)
    ids, mask = ids.to(device), mask.to(device)
    # KV room for one turn's steps (a tool turn grows it)
    spare = sampling.max_new_tokens + 1
    if prefix_cache is None:
        decoder = decoder_for(model, spare)
        logits = decoder.prefill(ids, mask)
    else:
        decoder, logits = prefix_cache.prefill(model, ids, mask, spare)
    limit = getattr(model.config, "max_position_embeddings", None)
    end_id = next(iter(_ids(tokenizer, [protocol.END])), None)
    stop_ids = set(_ids(tokenizer, [protocol.END, protocol.EOS, *sampling.stop_tokens]))
    if tokenizer.eos_token_id is not None:
        stop_ids.add(tokenizer.eos_token_id)
    call_prefix = protocol.CALL
    processors = sampling.processors()
    history = ids
    seqs = [_Sequence(p) for p in prompts]
    rows = list(range(len(seqs)))  # the sequence each row of the decoder's batch continues
    while True:
        scores = processors(history, logits) if len(processors) else logits
        if sampling.temperature > 0:
            chosen = torch.multinomial(torch.softmax(scores, -1).cpu(), 1,
                                       generator=generator).squeeze(-1).tolist()
        else:
            chosen = scores.argmax(-1).tolist()
        # plain ints for the per-row loop: indexing a tensor a row at a time costs more
        positions = decoder.next_position.tolist() if limit is not None else None
        feed = []
        for row, index in enumerate(rows):
            seq = seqs[index]
            if seq.done:
                feed.append(pad)
                continue
            forced = bool(seq.forced)
            token = seq.forced.popleft() if forced else chosen[row]
            out_ = seq.out
            out_.ids.append(token)
            if forced and not seq.forced:
                out_.turn_starts.append(len(out_.ids))  # the tool turn is in: a new assistant turn
                seq.sampled_before_turn = out_.sampled
            if not forced:
                out_.sampled += 1
                if token == end_id and tool is not None and len(out_.tool_calls) < max_tool_calls:
                    turn = tokenizer.decode(out_.ids[out_.turn_starts[-1]:-1],
                                            skip_special_tokens=False)
                    if turn.startswith(call_prefix):
                        query = turn[len(call_prefix):]
                        reply = tool(query)
                        out_.tool_calls.append((query, reply))
                        seq.forced.extend(tokenizer(protocol.tool_continuation(reply),
                                                    add_special_tokens=False)["input_ids"])
                if (not seq.forced and token in stop_ids) or (sampling.stop_strings and any(
                        s in out_.text(tokenizer) for s in sampling.stop_strings)):
                    seq.done, out_.finish = True, "stop"
                elif out_.sampled - seq.sampled_before_turn >= sampling.max_new_tokens:
                    seq.done = True  # this turn's budget is spent
            if on_token is not None:
                on_token(index, tokenizer.decode([token], skip_special_tokens=False))
            if not seq.done and limit is not None and positions[row] >= limit:
                seq.done = True  # the model's context is full
            feed.append(pad if seq.done else token)
        live = torch.tensor([not seqs[i].done for i in rows], device=device)
        if not live.any():
            break
        step_ids = torch.tensor(feed, device=device)
        if DROP_SHARE * len(rows) <= len(rows) - int(live.sum()) and \
                decoder.can_drop_rows():
            # enough rows have finished to drop them: a later step costs only the live ones
            keep, gone = live.nonzero().squeeze(1), (~live).nonzero().squeeze(1).tolist()
            if prefix_cache is not None:
                finished = [rows[g] for g in gone]
                prefix_cache.insert_batch(decoder, ids[finished], mask[finished],
                                          [seqs[i].out.ids for i in finished], decoder_rows=gone)
            decoder.keep_rows(keep)
            rows = [rows[k] for k in keep.tolist()]
            history, live, step_ids = history[keep], live[keep], step_ids[keep]
        history = torch.cat([history, step_ids[:, None]], dim=1)
        logits = decoder.step(step_ids, live)
    if prefix_cache is not None:
        prefix_cache.insert_batch(decoder, ids[rows], mask[rows], [seqs[i].out.ids for i in rows])
    return [s.out for s in seqs]


@dataclass
class Exchange:
    prompt: str
    query: str | None  # the query text the model wrote, if it called the tool
    db_reply: str | None
    answer: str  # the final assistant turn's text


def answer_questions(model, tokenizer, questions: list[tuple[str, str]], db: PeopleDB | None,
                     max_new_tokens: int = 48, batch_size: int = 256) -> list[Exchange]:
    """Answer (attribute, name) questions greedily; with `db`, the model may call the tool once
    per question, inside the batched loop."""
    prompts = [protocol.prompt(attr, name, with_tool=db is not None) for attr, name in questions]
    done = generate(model, tokenizer, prompts, Sampling(max_new_tokens=max_new_tokens),
                    tool=db.answer if db is not None else None, batch_size=batch_size)
    exchanges = []
    for prompt, g in zip(prompts, done):
        query, reply = g.tool_calls[0] if g.tool_calls else (None, None)
        exchanges.append(Exchange(prompt, query, reply, g.last_turn(tokenizer)))
    return exchanges


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int = 40, seed: int = 0) -> str:
    """Sample a continuation of `prompt` (temperature and top-k), reproducible with `seed`."""
    [g] = generate(model, tokenizer, [prompt],
                   Sampling(max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k if temperature > 0 else None, seed=seed))
    return tokenizer.decode(g.ids, skip_special_tokens=True)
