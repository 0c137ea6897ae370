"""Knowledge bits: how much of the people world a model stores in its weights (Physics of
Language Models, part 3.3, Allen-Zhu & Li 2024).

P3.3 bounds the bits a model holds by the bits it saves in coding the facts: for attribute a
with value set V_a (the generator's space, |V_a| values), N trained people cost N·log2|V_a| bits
to name uniformly, and only Σ_p CE_{p,a} bits with the model's help, so

    bits_a = max(0, Σ_p [log2|V_a| - CE_{p,a}])
    knowledge_bits = Σ_a bits_a,   bits_per_parameter = knowledge_bits / parameters

over the trained people p (every fact of theirs is in training text: lmpipe/data/tokens.py). |V_a|
comes from `world.json`'s `value_sets`, written by `prepare` from the generator
(lmpipe/data/world.py): 16,800 birth dates, 45 cities, 24 universities, 24 majors, 25 employers, not
the handful of values the drawn people happen to have.

CE_{p,a} is the model's cross-entropy, in bits, of the true value *among the values*: every
candidate v ∈ V_a is scored, with the END token that closes the answer, after the recall prompt
(no tool: `protocol.prompt(a, name, with_tool=False)`), and the scores are renormalized:

    q(v) = P(v END | prompt) / Σ_{v' ∈ V_a} P(v' END | prompt),   CE_{p,a} = -log2 q(v_{p,a})

so probability the model spends on strings that are no value at all (a tool call, a misspelt
city) costs nothing, and the END token keeps a value that is a prefix of another from counting
twice. (Before issue 15 CE was the answer's token-level loss: unbounded, one confidently wrong
byte string cost tens of bits, and |V_a| counted the values present: 74 birth dates in the
flagship's world of 25 trained + 50 held-out people.) A fact can still cost more than
log2|V_a| bits when the model prefers a wrong value; that is a real cost in the code, so it is
kept inside the attribute's sum.

Birth dates: V = year x month x day (50 x 12 x 28), which P3.3 also splits into its parts.
Scoring all 16,800 dates per fact is ~100x the work of the other five attributes together, so
the date is coded part by part with the chain rule, each part a multiple choice scored on its
own token span given the true earlier parts:

    q(y-m-d) = q1(y) · q2(m | y) · q3(d | y, m)
    q1(y) ∝ P(y | prompt),  q2(m | y) ∝ P(m | prompt y "-"),
    q3(d | y, m) ∝ P(d END | prompt y "-" m "-")

Each factor is normalized over its part's values, so the product sums to 1 over all 16,800 dates:
it is an exact distribution over V derived from the model (no approximation of the bound), at
50 + 12 + 28 = 90 scored sequences per fact. The separators' probabilities are left out because
a separator is forced once the format is known. The parts are encoded one by one
(enc(y) + enc("-") + enc(m) ...), which is how the byte and char tokenizers encode a date
anyway; for a BPE that would merge across a "-" it is still a valid distribution, only a looser
bound.

The floor: P3.3 states its bound for the data set as a whole (no clipping per fact that we
know of; its models are trained far above uniform). Bits are taken here per attribute and
floored at 0, because a decoder may code an attribute
uniformly instead of with the model (one bit per attribute to say which), so the floored sum is
still a lower bound up to six bits. Clipping per fact would not be: it would credit noise. The
floor only matters for models worse than uniform (untrained ones). P3.3 also counts the bits of
the names, which lmpipe does not: names are the keys here, not facts the model is asked for.

With a sample of n of the N trained people, Σ_p CE is estimated as N/n times the sample's sum
(unbiased for the sum); the records' `n` says how many were scored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from lmpipe.core import protocol
from lmpipe.core.archs import RECURRENT_TYPES
from lmpipe.data.tooldb import PeopleDB

MAX_LOGITS = 1 << 26  # logits held at once (batch x width x vocabulary): 256 MB of float32


def world_info(db: PeopleDB) -> dict:
    """`world.json` of the world whose database `db` is (it sits beside `people.duckdb`)."""
    [(path,)] = db.con.execute("SELECT path FROM duckdb_databases() "
                               "WHERE database_name = current_database()").fetchall()
    info = Path(path).with_name("world.json")
    if not info.is_file():
        raise FileNotFoundError(f"{info}: missing; knowledge bits read the value sets from it "
                                "(rebuild the world: dvc repro -f prepare)")
    return json.loads(info.read_text())


def value_space(world: dict) -> dict[str, dict]:
    """Per attribute its `parts` (lists of values) and `separator`, from world.json; refused
    when the world predates it (its knowledge bits would count against the wrong |V_a|)."""
    sets = world.get("value_sets")
    if not isinstance(sets, dict) or set(sets) != set(protocol.ATTRIBUTES):
        raise ValueError("world.json: no value_sets for every attribute (written by an older "
                         "lmpipe); rebuild the world: dvc repro -f prepare")
    return sets


def log2_values(space: dict[str, dict]) -> dict[str, float]:
    """log2|V_a| per attribute: the sum of log2 of its parts' sizes."""
    return {a: sum(math.log2(len(part)) for part in v["parts"]) for a, v in space.items()}


@torch.no_grad()
def continuation_logprobs(model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int,
                          batch_size: int = 256, vocab: int = 1024) -> list[list[float]]:
    """ln P(continuation | context) for every continuation of every (context, continuations)
    group: the sum of the continuation tokens' log-probs.

    A transformers attention model runs each context once and its continuations on the
    context's KV cache (a fact's 24-50 candidates share a ~40-token prompt: ~5x fewer tokens).
    A recurrent model (mamba, mamba2, hawk: RECURRENT_TYPES) and any other module taking
    `input_ids` (the tests' crafted models) get context + continuation whole, right-padded: their
    state is not a cache `batch_select_indices` can copy per continuation (hawk keeps it in its
    modules), and a causal recurrence never lets a pad after the continuation reach its
    scores."""
    if isinstance(model, PreTrainedModel) and model.config.model_type not in RECURRENT_TYPES:
        return _cached_logprobs(model, groups, pad_id, batch_size, vocab)
    pairs = [(c, t) for c, tails in groups for t in tails]
    flat = _whole_logprobs(model, [c for c, _ in pairs], [t for _, t in pairs], pad_id,
                           batch_size, vocab)
    out, i = [], 0
    for _, tails in groups:
        out.append(flat[i:i + len(tails)])
        i += len(tails)
    return out


def _whole_logprobs(model, contexts: list[list[int]], continuations: list[list[int]],
                    pad_id: int, batch_size: int, vocab: int) -> list[float]:
    """Each context + continuation as one right-padded row (batches of similar widths)."""
    device = next(model.parameters()).device
    lengths = [len(c) + len(t) for c, t in zip(contexts, continuations)]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # similar widths pad less
    out = [0.0] * len(order)
    start = 0
    while start < len(order):
        widest = lengths[order[min(start + batch_size, len(order)) - 1]]
        rows = order[start:start + max(1, min(batch_size, MAX_LOGITS // (widest * vocab)))]
        width = lengths[rows[-1]]
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        scored = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for r, i in enumerate(rows):
            head, tail = contexts[i], continuations[i]
            ids[r, :len(head) + len(tail)] = torch.tensor(head + tail)
            scored[r, len(head) - 1:len(head) + len(tail) - 1] = True  # predictions of the tail
        ids, scored = ids.to(device), scored.to(device)
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, ids[:, 1:, None])[..., 0].masked_fill(~scored, 0.0)
        sums = picked.double().sum(-1).tolist()
        for r, i in enumerate(rows):
            out[i] = sums[r]
        start += len(rows)
    return out


def _cached_logprobs(model, groups, pad_id: int, batch_size: int, vocab: int
                     ) -> list[list[float]]:
    """Contexts left-padded and run once (as lmpipe/eval/generate.py does), their cache repeated
    for each continuation, continuations right-padded after it."""
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in groups]
    widest = max((len(t) for _, tails in groups for t in tails), default=1)
    budget = max(1, min(batch_size, MAX_LOGITS // (widest * vocab)))  # continuations a forward
    g = 0
    while g < len(groups):
        chunk, rows = [], 0
        while g < len(groups) and (not chunk or rows + len(groups[g][1]) <= budget):
            chunk.append(g)
            rows += len(groups[g][1])
            g += 1
        heads = [groups[i][0] for i in chunk]
        width = max(len(h) for h in heads)
        ids = torch.full((len(heads), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(heads), width), dtype=torch.long)
        for r, head in enumerate(heads):
            ids[r, width - len(head):] = torch.tensor(head)
            mask[r, width - len(head):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        first = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=True, logits_to_keep=1)
        last = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # predicts token 0
        owner = [r for r, i in enumerate(chunk) for _ in groups[i][1]]
        tails = [t for i in chunk for t in groups[i][1]]
        tail_width = max(len(t) for t in tails)
        index = torch.tensor(owner, device=device)
        cache = first.cache
        cache.batch_select_indices(index)  # one copy of a context's cache per continuation
        tail_ids = torch.full((len(tails), tail_width), pad_id, dtype=torch.long)
        tail_mask = torch.zeros((len(tails), tail_width), dtype=torch.long)
        for r, tail in enumerate(tails):
            tail_ids[r, :len(tail)] = torch.tensor(tail)
            tail_mask[r, :len(tail)] = 1
        tail_ids, tail_mask = tail_ids.to(device), tail_mask.to(device)
        full_mask = torch.cat([mask[index], tail_mask], dim=1)
        tail_positions = positions[index, -1:] + 1 + torch.arange(tail_width, device=device)
        logits = model(input_ids=tail_ids, attention_mask=full_mask, position_ids=tail_positions,
                       cache=cache, use_cache=True).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token j + 1
        picked = torch.cat([last[index].gather(-1, tail_ids[:, :1]),
                            logp.gather(-1, tail_ids[:, 1:, None])[..., 0]], dim=1)
        sums = picked.masked_fill(tail_mask == 0, 0.0).double().sum(-1).tolist()
        for r, owner_row in enumerate(owner):
            out[chunk[owner_row]].append(sums[r])
    return out


def fact_bits(model, tokenizer, people: list[dict[str, str]], attribute: str, value_set: dict,
              batch_size: int = 256) -> list[float]:
    """CE_{p,a} in bits for each person: -log2 of the model's probability of the true value,
    renormalized over the value set, part by part (see the module docstring)."""
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    end = tokenizer.convert_tokens_to_ids(protocol.END)
    parts, sep = value_set["parts"], value_set["separator"]
    coded = [{v: encode(v) for v in part} for part in parts]
    tails = [[ids + [end] if k == len(coded) - 1 else ids for ids in part.values()]
             for k, part in enumerate(coded)]
    sep_ids = encode(sep) if sep else []
    groups, truths = [], []  # one group per (person, part): its context and candidates
    for person in people:
        truth = person[attribute].split(sep) if sep else [person[attribute]]
        if len(truth) != len(parts) or any(t not in c for t, c in zip(truth, coded)):
            raise ValueError(f"{person['name']}'s {attribute} {person[attribute]!r} is not in the "
                             "world's value set (world.json value_sets); rebuild the world")
        prefix = tokenizer(protocol.prompt(attribute, person["name"], with_tool=False))["input_ids"]
        for k, part in enumerate(coded):
            groups.append((prefix, tails[k]))
            truths.append(list(part).index(truth[k]))
            prefix = prefix + part[truth[k]] + sep_ids  # condition on the true part
    scores = continuation_logprobs(model, groups, tokenizer.pad_token_id, batch_size,
                                   vocab=len(tokenizer))
    bits = [0.0] * len(people)
    for g, (values, true) in enumerate(zip(scores, truths)):
        nats = torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0).item() - values[true]
        bits[g // len(parts)] += nats / math.log(2)
    return bits


def knowledge_records(model, tokenizer, db: PeopleDB, parameters: int, batch_size: int = 256,
                      people: list[dict[str, str]] | None = None,
                      world: dict | None = None) -> list[dict[str, Any]]:
    """Eval records: knowledge bits per attribute and in total, and bits per parameter, over all
    N trained people. With `people` (a sample of them), the cross-entropy sum is estimated from
    the sample and scaled to N (unbiased for the sum; `n` says how many were scored). `world`:
    the world.json content (default: read beside the database)."""
    space = value_space(world if world is not None else world_info(db))
    full = log2_values(space)
    trained = db.people("train")
    scored = people if people else trained
    scale = len(trained) / len(scored)
    records, total = [], 0.0
    for attribute in protocol.ATTRIBUTES:
        spent = scale * sum(fact_bits(model, tokenizer, scored, attribute, space[attribute],
                                      batch_size))
        bits = max(0.0, len(trained) * full[attribute] - spent)
        total += bits
        records.append({"metric": "knowledge_bits", "split": "trained", "attribute": attribute,
                        "value": bits, "n": len(scored)})
    records += [{"metric": "knowledge_bits", "split": "trained", "attribute": None,
                 "value": total, "n": len(scored)},
                {"metric": "bits_per_param", "split": "trained", "attribute": None,
                 "value": total / max(parameters, 1), "n": len(scored)}]
    return records
