"""The synthetic people world: the default experiment's data, generated from a seed.

Each person has a unique full name and six attributes. Trained people appear in biographies,
question/answer dialogs and tool dialogs; held-out people exist only in the database, so accuracy
on them measures tool use, not memory. Generation is a pure function of `WorldParams`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from lmpipe import protocol
from lmpipe.config import WorldParams

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


@dataclass(frozen=True)
class Person:
    name: str
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str
    employer_city: str
    split: str  # "train" or "heldout"

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


def attribute_values() -> dict[str, int]:
    """How many values each attribute can take (for knowledge-capacity accounting)."""
    return {
        "birth_date": 12 * 28 * 50,
        "birth_city": len(CITIES),
        "university": len(UNIVERSITIES),
        "major": len(MAJORS),
        "employer": len(EMPLOYERS),
        "employer_city": len(CITIES),
    }


def generate_people(params: WorldParams) -> list[Person]:
    """All people, trained first then held out; deterministic in `params.seed`."""
    total = params.people + params.heldout_people
    capacity = len(FIRST_NAMES) * len(LAST_NAMES)
    if total > capacity:
        raise ValueError(f"world.people + world.heldout_people = {total} exceeds the {capacity} "
                         "unique names the generator can make")
    rng = random.Random(params.seed)
    names = rng.sample([f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES], total)
    people = []
    for i, name in enumerate(names):
        people.append(Person(
            name=name,
            birth_date=f"{rng.randint(1950, 1999)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            birth_city=rng.choice(CITIES),
            university=rng.choice(UNIVERSITIES),
            major=rng.choice(MAJORS),
            employer=rng.choice(EMPLOYERS),
            employer_city=rng.choice(CITIES),
            split="train" if i < params.people else "heldout",
        ))
    return people


def documents(people: list[Person], params: WorldParams) -> Iterator[dict[str, str]]:
    """Training documents about the trained people, in a seeded shuffled order."""
    rng = random.Random(params.seed + 1)
    docs = []
    for person in people:
        if person.split != "train":
            continue
        facts = asdict(person)
        for _ in range(params.bios_per_person):
            bio = rng.choice(BIO_TEMPLATES).format(**facts)
            docs.append({"kind": "bio", "name": person.name, "text": protocol.text_document(bio)})
        for attribute in protocol.ATTRIBUTES:
            answer = person.value(attribute)
            if params.qa_dialogs:
                docs.append({"kind": "qa", "name": person.name, "attribute": attribute,
                             "text": protocol.qa_dialog(attribute, person.name, answer)})
            if params.tool_dialogs:
                docs.append({"kind": "tool", "name": person.name, "attribute": attribute,
                             "text": protocol.tool_dialog(attribute, person.name, answer)})
    rng.shuffle(docs)
    yield from docs


def write_world(params: WorldParams, out_dir: str | Path) -> dict[str, int]:
    """Write `people.duckdb` (all people) and `documents.jsonl` (training text) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    people = generate_people(params)
    db_path = out / "people.duckdb"
    db_path.unlink(missing_ok=True)
    with duckdb.connect(str(db_path)) as con:
        columns = ", ".join(f"{a} VARCHAR NOT NULL" for a in protocol.ATTRIBUTES)
        con.execute(f"CREATE TABLE people (name VARCHAR PRIMARY KEY, {columns}, split VARCHAR NOT NULL)")
        con.executemany(
            f"INSERT INTO people VALUES ({', '.join(['?'] * (len(protocol.ATTRIBUTES) + 2))})",
            [[p.name, *(p.value(a) for a in protocol.ATTRIBUTES), p.split] for p in people],
        )
    n_docs = 0
    with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
        for doc in documents(people, params):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n_docs += 1
    stats = {"people": params.people, "heldout_people": params.heldout_people, "documents": n_docs}
    (out / "world.json").write_text(json.dumps({"params": params.model_dump(), **stats,
                                                "attribute_values": attribute_values()}, indent=2))
    return stats
