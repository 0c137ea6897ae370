"""Knowledge bits against a direct computation, and their limits (0 for a know-nothing model,
N log2|V| for one that is certain of every answer)."""

import math

import pytest
import torch

from lmpipe import protocol
from lmpipe.knowledge import answer_bits, knowledge_records
from lmpipe.tooldb import PeopleDB


class Oracle(torch.nn.Module):
    """Puts all its probability on the true next token of a fixed set of texts: knows everything."""

    def __init__(self, tokenizer, texts):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.tok = tokenizer
        self.next = {}
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for i in range(1, len(ids)):
                self.next[tuple(ids[:i])] = ids[i]

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for row, ids in enumerate(input_ids.tolist()):
            for i in range(len(ids)):
                target = self.next.get(tuple(ids[:i + 1]))
                if target is not None:
                    logits[row, i, target] = 100.0
        return type("Out", (), {"logits": logits})()


def test_answer_bits_is_the_cross_entropy_of_the_answer_tokens(tiny_model, tokenizer):
    prompts = [protocol.prompt("major", "Al Bo", False), protocol.prompt("employer", "Zoe Young", False)]
    answers = ["Physics", "Acme Corporation"]
    got = answer_bits(tiny_model, tokenizer, prompts, answers, batch_size=1)
    direct = 0.0
    for prompt, answer in zip(prompts, answers):
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tokenizer(answer, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1], -1)
        direct -= sum(logp[i, ids[0, i + 1]].item() for i in range(len(head) - 1, ids.shape[1] - 1))
    assert got == pytest.approx(direct / math.log(2), rel=1e-5)
    assert answer_bits(tiny_model, tokenizer, prompts, answers, batch_size=2) == pytest.approx(got, rel=1e-5)


def test_knowledge_bits_range_from_zero_to_the_full_entropy(tiny_world, tiny_model, tokenizer):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        trained, everyone = db.people("train"), db.people("train") + db.people("heldout")
        texts = [protocol.prompt(a, p["name"], False) + p[a] for p in trained for a in protocol.ATTRIBUTES]
        oracle = knowledge_records(Oracle(tokenizer, texts), tokenizer, db, parameters=1000)
        random_model = knowledge_records(tiny_model, tokenizer, db, parameters=1000)
    full = {a: len(trained) * math.log2(len({p[a] for p in everyone})) for a in protocol.ATTRIBUTES}
    by_attribute = {r["attribute"]: r["value"] for r in oracle if r["metric"] == "knowledge_bits"}
    for attribute, bits in full.items():
        assert by_attribute[attribute] == pytest.approx(bits, rel=1e-3)
    assert by_attribute[None] == pytest.approx(sum(full.values()), rel=1e-3)
    [per_param] = [r["value"] for r in oracle if r["metric"] == "bits_per_param"]
    assert per_param == pytest.approx(sum(full.values()) / 1000, rel=1e-3)
    # an untrained model is worse than uniform over the values: floored at zero
    assert all(r["value"] == 0.0 for r in random_model)


def test_a_sample_of_people_estimates_the_whole_sum(tiny_world, tiny_model, tokenizer):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        trained = db.people("train")
        texts = [protocol.prompt(a, p["name"], False) + p[a] for p in trained for a in protocol.ATTRIBUTES]
        oracle = Oracle(tokenizer, texts)
        full = knowledge_records(oracle, tokenizer, db, parameters=10)
        half = knowledge_records(oracle, tokenizer, db, parameters=10, people=trained[::2])
    # an oracle's cross-entropy is ~0 for everyone: the sample gives the same total over all N
    assert half[-2]["value"] == pytest.approx(full[-2]["value"], rel=1e-3)
    assert half[-2]["n"] == len(trained[::2]) and full[-2]["n"] == len(trained)
