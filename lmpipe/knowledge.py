"""Knowledge bits: how much of the people world a model stores in its weights (Physics of
Language Models, part 3.3, Allen-Zhu & Li 2024).

For attribute a with value set V_a over N trained people, a model that knew nothing would need
N·log2|V_a| bits to name every person's value; what it knows is what it saves:

    bits_a = max(0, N·log2|V_a| - sum_p CE_bits(answer_p,a | recall prompt_p,a))
    knowledge_bits = sum_a bits_a,   bits_per_parameter = knowledge_bits / parameters

CE_bits is the model's cross-entropy, in bits, on the answer's tokens after the recall prompt
(no tool: `protocol.prompt(a, name, with_tool=False)`). |V_a| counts the distinct values of a in
the world (trained and held-out people). A model at the capacity limit stores ~2 bits/parameter.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lmpipe import protocol
from lmpipe.tooldb import PeopleDB


@torch.no_grad()
def answer_bits(model, tokenizer, prompts: list[str], answers: list[str],
                batch_size: int = 256) -> float:
    """Sum over pairs of -log2 P(answer | prompt), the answer's tokens only."""
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        heads = tokenizer(prompts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        tails = tokenizer(answers[start:start + batch_size], add_special_tokens=False)["input_ids"]
        width = max(len(h) + len(t) for h, t in zip(heads, tails))
        ids = torch.full((len(heads), width), tokenizer.pad_token_id, dtype=torch.long)
        scored = torch.zeros((len(heads), width - 1), dtype=torch.bool)
        for row, (head, tail) in enumerate(zip(heads, tails)):
            ids[row, :len(head) + len(tail)] = torch.tensor(head + tail)
            scored[row, len(head) - 1:len(head) + len(tail) - 1] = True  # predictions of the tail
        ids, scored = ids.to(device), scored.to(device)
        logits = model(input_ids=ids).logits[:, :-1][scored].float()  # answer positions only
        picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:][scored][:, None])
        total += -(picked.sum().item()) / math.log(2)
    return total


def knowledge_records(model, tokenizer, db: PeopleDB, parameters: int, batch_size: int = 256,
                      people: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Eval records: knowledge bits per attribute and in total, and bits per parameter, over all
    N trained people. With `people` (a sample of them), the cross-entropy sum is estimated from
    the sample and scaled to N (unbiased for the sum; `n` says how many were scored)."""
    trained = db.people("train")
    everyone = trained + db.people("heldout")
    scored = people if people else trained
    scale = len(trained) / len(scored)
    records, total = [], 0.0
    for attribute in protocol.ATTRIBUTES:
        values = {p[attribute] for p in everyone}
        prompts = [protocol.prompt(attribute, p["name"], with_tool=False) for p in scored]
        spent = scale * answer_bits(model, tokenizer, prompts, [p[attribute] for p in scored],
                                    batch_size)
        bits = max(0.0, len(trained) * math.log2(len(values)) - spent)
        total += bits
        records.append({"metric": "knowledge_bits", "split": "trained", "attribute": attribute,
                        "value": bits, "n": len(scored)})
    records += [{"metric": "knowledge_bits", "split": "trained", "attribute": None,
                 "value": total, "n": len(scored)},
                {"metric": "bits_per_param", "split": "trained", "attribute": None,
                 "value": total / max(parameters, 1), "n": len(scored)}]
    return records
