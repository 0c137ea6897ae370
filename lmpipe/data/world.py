"""The synthetic people world: the default experiment's data, generated from a seed.

Each person has a unique full name and six attributes. Trained people appear in biographies,
question/answer dialogs, tool dialogs and multi-turn conversations (several of their attributes
asked in turn; with `tool_error_rate`, some tool rounds meet a busy database and retry); held-out people exist only in the database, so accuracy
on them measures tool use, not memory. Generation is a pure function of `WorldParams`.

The split is made here, at the level of people, not later per document: a fact the evaluator
counts as trained must be in training text, and validation text must not take facts away from
training (issue 15). So `prepare` writes two files of documents:

    documents.jsonl    every rendering (bio, Q&A, tool dialog) of every trained person: "train"
    validation.jsonl   renderings of the same kinds about people who are never trained: "val"

The validation people are the held-out people (rendering their tool dialogs into *validation*
text never trains on them, so tool accuracy on them still tests tool use) or, when
`world.heldout_people` is 0, `validation_count(people)` dedicated validation people, generated
after everyone else (so trained and held-out people do not change) and stored in the database
with split "validation", which the evaluator never samples. Every row carries its `split` and
the `facts` it states, so `tokenize` can check that no trained fact is missing from training
text without reading the database. `check_split` checks the same here against the people.

`value_sets()` is the generator's value space (what knowledge bits count against, written to
`world.json`): a birth date is three independent parts, year x month x day = 50 x 12 x 28.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from lmpipe.core import protocol
from lmpipe.data.params import WorldParams

FIRST_NAMES = """Ada Alan Alice Amir Anna Arjun Aya Ben Bianca Boris Carla Chen Clara Dario Dev Diana
Elena Emil Emma Eva Felix Fatima Gina Hana Hugo Ines Ivan Jade Jonas Julia Kai Karim Kenji Lara Leo
Lina Luca Maya Marco Mei Mila Nadia Nico Nina Noah Omar Oskar Pablo Priya Quinn Rafael Rosa Ruth Sam
Sara Sofia Tariq Tess Theo Uma Vera Victor Wen Xavier Yara Yusuf Zoe Zane""".split()

LAST_NAMES = """Abbott Alvarez Bauer Brown Castro Chen Costa Dalton Diaz Dubois Eriksen Evans Fischer
Garcia Gupta Haas Hansen Ito Jensen Kato Keller Khan Klein Kowalski Lang Larsen Lopez Meyer Moreau
Murphy Nakamura Novak Okafor Olsen Park Patel Petrov Quinn Reyes Rossi Sato Schmidt Silva Singh
Suzuki Tanaka Torres Vargas Wagner Walsh Weber Wong Yamada Young Zhang Ziegler""".split()

CITIES = """Amsterdam Athens Bangkok Barcelona Berlin Bogota Boston Cairo Chicago Dakar Delhi Dublin
Geneva Hanoi Helsinki Istanbul Jakarta Kyoto Lagos Lima Lisbon London Madrid Manila Melbourne Miami
Montreal Mumbai Munich Nairobi Osaka Oslo Paris Prague Quito Rome Seattle Seoul Sydney Taipei
Tokyo Toronto Vienna Warsaw Zurich""".split()

UNIVERSITIES = [f"{w} University" for w in """Ashford Belmont Carlton Dunmore Everly Fairview
Glenwood Harlow Ivywood Jasper Kingsley Linden Marlow Northgate Oakridge Pemberton Queensbury
Redfield Stanmore Thornbury Upton Vale Westbrook Yarrow""".split()]

MAJORS = """Anthropology Architecture Astronomy Biology Chemistry Computer_Science Economics
Education Engineering Finance Geology History Law Linguistics Literature Mathematics Medicine Music
Nursing Philosophy Physics Psychology Sociology Statistics""".split()
MAJORS = [m.replace("_", " ") for m in MAJORS]  # "_" keeps two-word majors whole in the split

EMPLOYERS = [f"{w} {s}" for w, s in zip("""Acme Apex Beacon Cobalt Delta Ember Falcon Granite Harbor
Indigo Juniper Keystone Lumen Meridian Nimbus Orion Pioneer Quartz Redwood Summit Titan Unity Vertex
Willow Zenith""".split(), ["Corp", "Labs", "Systems", "Group", "Foods", "Media", "Motors", "Bank",
                          "Health", "Energy"] * 3)]

BIO_TEMPLATES = [
    "{name} was born on {birth_date} in {birth_city}. {name} studied {major} at {university}. "
    "{name} works for {employer} in {employer_city}.",
    "{name} is a graduate of {university}, where {name} studied {major}. Born in {birth_city} on "
    "{birth_date}, {name} now works at {employer} in {employer_city}.",
    "Born on {birth_date} in {birth_city}, {name} went on to study {major} at {university} and "
    "today works for {employer} in {employer_city}.",
]

YEARS = (1950, 1999)  # birth years, inclusive; months 1-12 and days 1-28, so every date exists
MONTHS = (1, 12)
DAYS = (1, 28)
VALIDATION_SHARE = 0.1  # dedicated validation people per trained person (world.heldout_people 0)


@dataclass(frozen=True)
class Person:
    name: str
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str
    employer_city: str
    split: str  # "train", "heldout" or "validation" (dedicated validation people)

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


def value_sets() -> dict[str, dict]:
    """Every value each attribute can take, as `generate_people` draws it: per attribute its
    independent `parts` (lists of strings), a value being `separator.join(one of each part)`.
    Read at call time, so a patched list (tests) is what the world records."""
    def span(bounds: tuple[int, int], width: int) -> list[str]:
        return [f"{i:0{width}d}" for i in range(bounds[0], bounds[1] + 1)]

    one = lambda values: {"parts": [list(values)], "separator": ""}  # noqa: E731
    return {
        "birth_date": {"parts": [span(YEARS, 4), span(MONTHS, 2), span(DAYS, 2)], "separator": "-"},
        "birth_city": one(CITIES),
        "university": one(UNIVERSITIES),
        "major": one(MAJORS),
        "employer": one(EMPLOYERS),
        "employer_city": one(CITIES),
    }


def attribute_values() -> dict[str, int]:
    """How many values each attribute can take, |V_a| (for knowledge-capacity accounting): the
    generator's space, not the values that happen to be drawn (16,800 birth dates, not ~N)."""
    return {a: math.prod(len(part) for part in v["parts"]) for a, v in value_sets().items()}


def validation_count(people: int) -> int:
    """Dedicated validation people a world without held-out people makes."""
    return max(1, math.ceil(people * VALIDATION_SHARE))


def _person(rng: random.Random, name: str, split: str) -> Person:
    return Person(
        name=name,
        birth_date=f"{rng.randint(*YEARS)}-{rng.randint(*MONTHS):02d}-{rng.randint(*DAYS):02d}",
        birth_city=rng.choice(CITIES),
        university=rng.choice(UNIVERSITIES),
        major=rng.choice(MAJORS),
        employer=rng.choice(EMPLOYERS),
        employer_city=rng.choice(CITIES),
        split=split,
    )


def generate_people(params: WorldParams) -> list[Person]:
    """All people, trained first, then held out, then (only when there are no held-out people)
    dedicated validation people; deterministic in `params.seed`. The validation people come from
    a second generator, so trained and held-out people are the same as in a world without them."""
    total = params.people + params.heldout_people
    all_names = [f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES]
    if total > len(all_names):
        raise ValueError(f"world.people + world.heldout_people = {total} exceeds the "
                         f"{len(all_names)} unique names the generator can make")
    rng = random.Random(params.seed)
    names = rng.sample(all_names, total)
    people = [_person(rng, name, "train" if i < params.people else "heldout")
              for i, name in enumerate(names)]
    if params.heldout_people:
        return people
    used = set(names)
    free = [n for n in all_names if n not in used]
    if not free:
        raise ValueError(f"world.people = {params.people} uses all {len(all_names)} names and "
                         "world.heldout_people = 0 leaves none for a validation person; expected "
                         f"world.people < {len(all_names)} or world.heldout_people >= 1")
    val_rng = random.Random(f"{params.seed}-validation")
    count = min(validation_count(params.people), len(free))
    return people + [_person(val_rng, name, "validation") for name in val_rng.sample(free, count)]


def _render(person: Person, params: WorldParams, rng: random.Random,
            split: str) -> list[dict]:
    """Every document about one person, each with its split and the facts it states."""
    facts = {a: person.value(a) for a in protocol.ATTRIBUTES}  # what a biography states
    docs = []
    for _ in range(params.bios_per_person):
        bio = rng.choice(BIO_TEMPLATES).format(**asdict(person))
        docs.append({"kind": "bio", "name": person.name, "split": split, "facts": facts,
                     "text": protocol.text_document(bio)})
    for attribute in protocol.ATTRIBUTES:
        answer = person.value(attribute)
        fact = {attribute: answer}
        if params.qa_dialogs:
            docs.append({"kind": "qa", "name": person.name, "attribute": attribute, "split": split,
                         "facts": fact, "text": protocol.qa_dialog(attribute, person.name, answer)})
        if params.tool_dialogs:
            text = protocol.conversation([protocol.Round(attribute, person.name, answer,
                                                         _failures(params, rng))], with_tool=True)
            docs.append({"kind": "tool", "name": person.name, "attribute": attribute,
                         "split": split, "facts": fact, "text": text})
    for _ in range(params.conversations_per_person):
        asked = rng.sample(protocol.ATTRIBUTES, params.conversation_turns)
        rounds = [protocol.Round(a, person.name, person.value(a), _failures(params, rng))
                  for a in asked]
        docs.append({"kind": "conversation", "name": person.name, "attributes": asked,
                     "split": split, "facts": {a: person.value(a) for a in asked},
                     "text": protocol.conversation(rounds, with_tool=params.tool_dialogs)})
    return docs


def _failures(params: WorldParams, rng: random.Random) -> int:
    """Busy replies before a tool round's answer: one with probability world.tool_error_rate.
    Draws nothing at rate 0, so a world without tool errors is the one rendered before them."""
    return int(rng.random() < params.tool_error_rate) if params.tool_error_rate else 0


def documents(people: list[Person], params: WorldParams) -> Iterator[dict]:
    """Training documents about the trained people, in a seeded shuffled order, then validation
    documents about the held-out or validation people (`split` "val"), in another."""
    rng = random.Random(params.seed + 1)  # the training documents are drawn as before issue 15
    docs = [d for p in people if p.split == "train" for d in _render(p, params, rng, "train")]
    rng.shuffle(docs)
    yield from docs
    val_rng = random.Random(f"{params.seed}-validation-documents")
    val_docs = [d for p in people if p.split != "train" for d in _render(p, params, val_rng, "val")]
    val_rng.shuffle(val_docs)
    yield from val_docs


def check_split(people: list[Person], docs: list[dict]) -> None:
    """Refuse a split that loses trained facts: every attribute value of every trained person
    must be stated by a training document about them, and no validation document may be about
    a trained person (else its text, held out, would not be trained on). Raises ValueError."""
    trained = {p.name: p for p in people if p.split == "train"}
    stated: dict[str, set[str]] = {name: set() for name in trained}
    problems = []
    for doc in docs:
        person = trained.get(doc["name"])
        if doc["split"] != "train":
            if person is not None:
                problems.append(f"a validation {doc['kind']} document is about trained person "
                                f"{doc['name']}")
            continue
        if person is None:
            problems.append(f"a training {doc['kind']} document is about {doc['name']}, who is "
                            "not a trained person")
            continue
        stated[person.name] |= {a for a, v in doc["facts"].items()
                                if v == person.value(a) and v in doc["text"]}
    for name, attributes in stated.items():
        problems += [f"{name}'s {a} is in no training document"
                     for a in protocol.ATTRIBUTES if a not in attributes]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("the world's split loses trained facts: " + "; ".join(problems[:5]) + more)


def write_world(params: WorldParams, out_dir: str | Path) -> dict[str, int]:
    """Write `people.duckdb` (all people), `documents.jsonl` (training documents),
    `validation.jsonl` (validation documents) and `world.json` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    people = generate_people(params)
    docs = list(documents(people, params))
    check_split(people, docs)  # before anything is written
    db_path = out / "people.duckdb"
    db_path.unlink(missing_ok=True)
    with duckdb.connect(str(db_path)) as con:
        columns = ", ".join(f"{a} VARCHAR NOT NULL" for a in protocol.ATTRIBUTES)
        con.execute(f"CREATE TABLE people (name VARCHAR PRIMARY KEY, {columns}, split VARCHAR NOT NULL)")
        con.executemany(
            f"INSERT INTO people VALUES ({', '.join(['?'] * (len(protocol.ATTRIBUTES) + 2))})",
            [[p.name, *(p.value(a) for a in protocol.ATTRIBUTES), p.split] for p in people],
        )
    counts = {"train": 0, "val": 0}
    with open(out / "documents.jsonl", "w", encoding="utf-8") as train, \
            open(out / "validation.jsonl", "w", encoding="utf-8") as val:
        for doc in docs:
            (train if doc["split"] == "train" else val).write(json.dumps(doc, ensure_ascii=False)
                                                              + "\n")
            counts[doc["split"]] += 1
    stats = {"people": params.people, "heldout_people": params.heldout_people,
             "validation_people": sum(p.split != "train" for p in people),
             "documents": counts["train"], "validation_documents": counts["val"]}
    (out / "world.json").write_text(json.dumps({"params": params.model_dump(), **stats,
                                                "attribute_values": attribute_values(),
                                                "value_sets": value_sets()}, indent=2))
    return stats
