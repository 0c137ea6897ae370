"""Batched greedy generation of assistant turns, with database tool calls executed in between.

Each assistant turn is generated for a whole batch at once (left padding, KV cache through
transformers' `generate`), stopping at END. A turn that opens with CALL is a tool query: the
database answers it, the environment appends the database turn, and only those sequences get a
second assistant turn; the others are already done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmpipe import protocol
from lmpipe.tooldb import PeopleDB


@dataclass
class Exchange:
    prompt: str
    query: str | None  # the query text the model wrote, if it called the tool
    db_reply: str | None
    answer: str  # the final assistant turn's text


@torch.no_grad()
def generate_turns(model, tokenizer, prompts: list[str], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """One assistant turn per prompt (text up to, not including, END), greedy."""
    end = protocol.END
    turns: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.convert_tokens_to_ids([protocol.END, protocol.EOS]),
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1]:]
        for text in tokenizer.batch_decode(new, skip_special_tokens=False):
            text = text.split(end, 1)[0]
            turns.append(text.replace(protocol.PAD, ""))
    return turns


def answer_questions(model, tokenizer, questions: list[tuple[str, str]], db: PeopleDB | None,
                     max_new_tokens: int = 48, batch_size: int = 256) -> list[Exchange]:
    """Answer (attribute, name) questions; with `db`, the model may call the tool once per question."""
    prompts = [protocol.prompt(attr, name, with_tool=db is not None) for attr, name in questions]
    first = generate_turns(model, tokenizer, prompts, max_new_tokens, batch_size)
    exchanges = [Exchange(p, None, None, turn) for p, turn in zip(prompts, first)]
    if db is None:
        return exchanges
    calls = [i for i, ex in enumerate(exchanges) if ex.answer.startswith(protocol.CALL)]
    follow_ups = []
    for i in calls:
        ex = exchanges[i]
        ex.query = ex.answer[len(protocol.CALL):]
        ex.db_reply = db.answer(ex.query)
        follow_ups.append(f"{ex.prompt}{protocol.CALL}{ex.query}{protocol.END}"
                          f"{protocol.tool_continuation(ex.db_reply)}")
    second = generate_turns(model, tokenizer, follow_ups, max_new_tokens, batch_size)
    for i, turn in zip(calls, second):
        exchanges[i].answer = turn
    return exchanges


@torch.no_grad()
def sample_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int = 40, seed: int = 0) -> str:
    """Sample a continuation of `prompt` (temperature and top-k), reproducible with `seed`."""
    torch.manual_seed(seed)
    enc = tokenizer(tokenizer.bos_token + prompt, return_tensors="pt", add_special_tokens=False)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:
        max_new_tokens = max(0, min(max_new_tokens, limit - enc["input_ids"].shape[1]))
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                         temperature=temperature if temperature > 0 else None,
                         top_k=top_k if temperature > 0 else None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
