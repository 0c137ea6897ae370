"""Knowledge bits against independent references: crafted language models whose distribution
over each answer is known exactly, and value-set sizes written out here, not read from lmpipe.

A uniform model stores 0 bits, an oracle N·Σ_a log2|V_a|, a model that knows half the people
half of that, and a model that puts half its mass on the truth N·Σ_a log2(|V_a|/2 + 1/2)."""

import json
import math

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.data import world
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.knowledge import continuation_logprobs, fact_bits, knowledge_records
from lmpipe.data.params import WorldParams

# |V_a| of the generator, written out: 50 birth years x 12 months x 28 days, 45 cities,
# 24 universities, 24 majors, 25 employers
SIZES = {"birth_date": 50 * 12 * 28, "birth_city": 45, "university": 24, "major": 24,
         "employer": 25, "employer_city": 45}
DATES = [f"{y}-{m:02d}-{d:02d}" for y in range(1950, 2000) for m in range(1, 13)
         for d in range(1, 29)]
NEG = -1e4  # the logit of an impossible token


def value_list(attribute: str) -> list[str]:
    return {"birth_date": DATES, "birth_city": world.CITIES, "university": world.UNIVERSITIES,
            "major": world.MAJORS, "employer": world.EMPLOYERS,
            "employer_city": world.CITIES}[attribute]


def full_bits(n_people: int) -> float:
    return n_people * sum(math.log2(v) for v in SIZES.values())


class Trie:
    """A distribution over answer strings as next-character probabilities."""

    def __init__(self, dist: dict[str, float]):
        self.mass: dict[str, float] = {}
        self.dist = dist
        for value, p in dist.items():
            for i in range(len(value) + 1):
                self.mass[value[:i]] = self.mass.get(value[:i], 0.0) + p

    def next(self, prefix: str) -> dict[str, float]:
        """P(next character or END | prefix), over the strings that extend `prefix`."""
        total = self.mass.get(prefix, 0.0)
        if total == 0.0:
            return {}
        out = {protocol.END: self.dist.get(prefix, 0.0) / total}
        for value in self._children(prefix):
            out[value] = self.mass[prefix + value] / total
        return out

    def _children(self, prefix: str):
        cache = self.__dict__.setdefault("_kids", {})
        if prefix not in cache:
            cache[prefix] = sorted({k[len(prefix)] for k in self.mass
                                    if len(k) == len(prefix) + 1 and k.startswith(prefix)})
        return cache[prefix]


class Crafted(torch.nn.Module):
    """A language model that, after the recall prompt of (attribute, name), generates answer
    strings closed by END with exactly the probabilities `beliefs[(attribute, name)]`; elsewhere
    it is uniform. It works on text, not on lmpipe's knowledge code."""

    def __init__(self, tokenizer, beliefs: dict[tuple[str, str], Trie]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.assistant = tokenizer.convert_tokens_to_ids(protocol.ASSISTANT)
        self.end = tokenizer.convert_tokens_to_ids(protocol.END)
        self.beliefs = {tuple(tokenizer(protocol.prompt(a, n, False))["input_ids"]): trie for (a, n), trie in beliefs.items()}

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for row, ids in enumerate(input_ids.tolist()):
            start = ids.index(self.assistant)
            trie = self.beliefs[tuple(ids[:start + 1])]
            prefix = ""
            for i in range(start, len(ids)):
                if i > start:
                    if ids[i] >= 256:  # END or padding: the answer is over
                        break
                    prefix += chr(ids[i])
                logits[row, i] = NEG
                for token, p in trie.next(prefix).items():
                    tid = self.end if token == protocol.END else ord(token)
                    logits[row, i, tid] = math.log(p) if p > 0 else NEG
        return type("Out", (), {"logits": logits})()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("knowledge_world")
    world.write_world(WorldParams(seed=5, people=6, heldout_people=2, qa_dialogs=True), out)
    with PeopleDB(out / "people.duckdb") as db:
        trained = db.people("train")
    return out, trained


def _uniform_tries() -> dict[str, Trie]:
    return {a: Trie({v: 1 / SIZES[a] for v in value_list(a)}) for a in protocol.ATTRIBUTES}


def _records(tokenizer, folder, beliefs, people=None):
    with PeopleDB(folder / "people.duckdb") as db:
        return knowledge_records(Crafted(tokenizer, beliefs), tokenizer, db, parameters=1000,
                                 people=people)


def _total(records) -> float:
    [total] = [r["value"] for r in records if r["metric"] == "knowledge_bits"
               and r["attribute"] is None]
    return total


def test_the_value_sets_are_the_generators(small_world):
    folder, _ = small_world
    info = json.loads((folder / "world.json").read_text())
    assert info["attribute_values"] == SIZES
    assert len(world.CITIES) == 45 and len(world.EMPLOYERS) == 25 and len(world.MAJORS) == 24
    years, months, days = info["value_sets"]["birth_date"]["parts"]
    assert sorted(f"{y}-{m}-{d}" for y in years for m in months for d in days) == DATES
    assert info["value_sets"]["major"] == {"parts": [world.MAJORS], "separator": ""}


def test_a_uniform_model_stores_nothing_and_an_oracle_everything(small_world, tokenizer):
    folder, trained = small_world
    uniform = _uniform_tries()
    nothing = _records(tokenizer, folder, {(a, p["name"]): uniform[a] for p in trained
                                           for a in protocol.ATTRIBUTES})
    assert all(r["value"] == pytest.approx(0.0, abs=1e-6) for r in nothing)
    oracle = _records(tokenizer, folder, {(a, p["name"]): Trie({p[a]: 1.0}) for p in trained
                                          for a in protocol.ATTRIBUTES})
    by_attribute = {r["attribute"]: r["value"] for r in oracle if r["metric"] == "knowledge_bits"}
    for attribute, size in SIZES.items():
        assert by_attribute[attribute] == pytest.approx(len(trained) * math.log2(size), rel=1e-6)
    assert _total(oracle) == pytest.approx(full_bits(len(trained)), rel=1e-6)
    assert full_bits(len(trained)) == pytest.approx(6 * 38.834, abs=0.01)  # 38.83 bits a person
    [per_param] = [r["value"] for r in oracle if r["metric"] == "bits_per_param"]
    assert per_param == pytest.approx(full_bits(len(trained)) / 1000, rel=1e-6)


def test_knowing_half_the_people_is_half_the_bits(small_world, tokenizer):
    folder, trained = small_world
    uniform = _uniform_tries()
    known = {p["name"] for p in trained[::2]}
    beliefs = {(a, p["name"]): Trie({p[a]: 1.0}) if p["name"] in known else uniform[a]
               for p in trained for a in protocol.ATTRIBUTES}
    assert _total(_records(tokenizer, folder, beliefs)) == \
        pytest.approx(full_bits(len(trained)) / 2, rel=1e-6)


def test_a_hedging_model_costs_exactly_its_probability_of_the_truth(small_world, tokenizer):
    """Half the mass on the truth, half spread uniformly: q(truth) = 1/2 + 1/(2|V|) per fact,
    birth dates included (the year/month/day chain is exact, not an approximation)."""
    folder, trained = small_world
    beliefs = {}
    for p in trained:
        for a in protocol.ATTRIBUTES:
            dist = {v: 0.5 / SIZES[a] for v in value_list(a)}
            dist[p[a]] += 0.5
            beliefs[(a, p["name"])] = Trie(dist)
    expected = len(trained) * sum(math.log2(v) + math.log2(0.5 + 0.5 / v) for v in SIZES.values())
    assert _total(_records(tokenizer, folder, beliefs)) == pytest.approx(expected, rel=1e-6)


def test_mass_outside_the_value_set_costs_nothing_and_a_confident_error_is_bounded(
        small_world, tokenizer):
    """Token-level loss charged a model for mass on non-values ("Atlantis") and a confidently
    wrong answer without bound; over the value set, the first is free and the second costs
    -log2 of the mass left on the truth."""
    folder, trained = small_world
    person = trained[0]
    sure = Trie({person["major"]: 0.01, "Alchemy": 0.99})  # not a major: renormalized away
    wrong = Trie({person["major"]: 0.01,
                  next(v for v in world.MAJORS if v != person["major"]): 0.99})
    value_set = json.loads((folder / "world.json").read_text())["value_sets"]["major"]
    [free] = fact_bits(Crafted(tokenizer, {("major", person["name"]): sure}), tokenizer,
                       [person], "major", value_set)
    [costly] = fact_bits(Crafted(tokenizer, {("major", person["name"]): wrong}), tokenizer,
                         [person], "major", value_set)
    assert free == pytest.approx(0.0, abs=1e-6)
    assert costly == pytest.approx(-math.log2(0.01), rel=1e-6)


def test_a_sample_of_people_estimates_the_whole_sum(small_world, tokenizer):
    folder, trained = small_world
    oracle = {(a, p["name"]): Trie({p[a]: 1.0}) for p in trained for a in protocol.ATTRIBUTES}
    half = _records(tokenizer, folder, oracle, people=trained[::2])
    assert _total(half) == pytest.approx(full_bits(len(trained)), rel=1e-6)
    assert half[-2]["n"] == len(trained[::2])


def test_real_model_scores_match_a_direct_computation(small_world, tokenizer, tiny_model):
    """An untrained transformer: the estimator's cost of a fact is -log2 of the softmax, over
    the values, of each value's log-probability computed here one sequence at a time."""
    folder, trained = small_world
    person = trained[1]
    value_set = json.loads((folder / "world.json").read_text())["value_sets"]["university"]
    [got] = fact_bits(tiny_model, tokenizer, [person], "university", value_set, batch_size=7)
    head = tokenizer(protocol.prompt("university", person["name"], False))["input_ids"]
    assert head[0] == tokenizer.bos_token_id
    scores = []
    for value in world.UNIVERSITIES:
        tail = tokenizer(value + protocol.END, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1].double(), -1)
        scores.append(sum(logp[i, ids[0, i + 1]].item() for i in range(len(head) - 1,
                                                                        ids.shape[1] - 1)))
    truth = world.UNIVERSITIES.index(person["university"])
    direct = -(scores[truth] - torch.logsumexp(torch.tensor(scores), 0).item()) / math.log(2)
    assert got == pytest.approx(direct, rel=1e-4)


def test_batching_does_not_change_scores(tokenizer, tiny_model):
    """Contexts of different lengths, continuations of different lengths: the KV-cached path
    (left-padded contexts, right-padded continuations) gives what one sequence at a time does."""
    groups = [([256, 2, 3], [[10, 11], [12], [13, 14, 15]]), ([256, 5], [[16, 17, 18, 19]]),
              ([256, 7, 8, 9, 10, 11], [[20], [21, 22]])]
    direct = []
    for head, tails in groups:
        row = []
        for tail in tails:
            ids = torch.tensor([head + tail])
            with torch.no_grad():
                logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].double(), -1)
            row.append(sum(logp[len(head) - 1 + j, t].item() for j, t in enumerate(tail)))
        direct.append(row)
    for batch_size in (1, 3, 256):
        got = continuation_logprobs(tiny_model, groups, tokenizer.pad_token_id, batch_size)
        assert [len(r) for r in got] == [3, 1, 2]
        for mine, theirs in zip(got, direct):
            assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-4)


def test_a_world_without_value_sets_is_refused(small_world, tokenizer, tiny_model):
    folder, _ = small_world
    old = json.loads((folder / "world.json").read_text())
    del old["value_sets"]
    with PeopleDB(folder / "people.duckdb") as db, pytest.raises(ValueError, match="value_sets"):
        knowledge_records(tiny_model, tokenizer, db, parameters=10, world=old)
