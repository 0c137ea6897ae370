"""Experiment: does the linear probe at the name token come alive when biographies are permuted?

Physics of LM 3.1 finds attributes linearly readable at a person's name only when the training
biographies are augmented (several per person, sentences in random order). This trains a byte-level
model on the small 4-values-per-attribute world of tests/eval/test_linear_probe.py, with `--bios`
such biographies per person (each fact a sentence starting with the name, in random order) beside
the Q&A dialogs, then prints the probe accuracy per layer at the name (`bio`) and at the answer
position (`answer`), each beside its controls (issue 15, lmpipe/eval/linear_probe.py): the
next-token baseline (a lookup from the token that follows the probed position, at `answer` the
answer's first byte, to the label), Hewitt & Liang's control task (the same probe on random labels
fixed per person) and selectivity (accuracy - control task), and a summary of the top layer.

The test's values each start with their own letter, so at `answer` the first byte names the value
of every attribute but the date (every date starts with "1"): the next-token baseline is 1.0 there
and no probe can show more. `--values shared` replaces them by values that share first letters in
pairs (Amsterdam/Athens, Berlin/Boston, ...): the first byte then tells only the pair (baseline
~0.5), and a probe above the baseline reads more of the value than its first byte.

Usage: `.venv/bin/python bench/name_probe.py [--people 60 --bios 6 --steps 3000 --layers 4
--values distinct]` (~9 min on 2 idle cores with the defaults; the small setting, `--steps 1500
--layers 2 --threads 1`, took 10-12 min on 2 cores loaded by other work, where 1 thread beat 2).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_linear_probe import TEST_VALUES  # noqa: E402

from lmpipe.core import protocol  # noqa: E402
from lmpipe.data import world
from lmpipe.data.tokenizer import build_byte_tokenizer  # noqa: E402
from lmpipe.data.tokens import TokenSplit, tokenize_documents  # noqa: E402
from lmpipe.data.tooldb import PeopleDB  # noqa: E402
from lmpipe.eval.linear_probe import FINAL, probe_model  # noqa: E402
from lmpipe.eval.probe_run import format_table  # noqa: E402
from lmpipe.model.build import build_model  # noqa: E402
from lmpipe.data.params import WorldParams  # noqa: E402
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams
from lmpipe.train.loop import train  # noqa: E402

# values sharing first letters in pairs: the answer's first byte tells the pair, not the value
SHARED_VALUES = {
    "CITIES": ["Amsterdam", "Athens", "Berlin", "Boston"],
    "UNIVERSITIES": ["Ashford University", "Avon University", "Belmont University",
                     "Bristol University"],
    "MAJORS": ["Anthropology", "Astronomy", "Biology", "Botany"],
    "EMPLOYERS": ["Acme Corp", "Apex Labs", "Beacon Systems", "Bright Foods"],
}
VALUES = {"distinct": TEST_VALUES, "shared": SHARED_VALUES}

SENTENCES = {"birth_date": "{name} was born on {birth_date}.",
             "birth_city": "{name} was born in {birth_city}.",
             "university": "{name} graduated from {university}.",
             "major": "{name} studied {major}.",
             "employer": "{name} works for {employer}.",
             "employer_city": "{name} works in {employer_city}."}


def permuted_bios(people: list[dict[str, str]], per_person: int, seed: int) -> list[str]:
    """`per_person` biographies of each person, the six fact sentences in a fresh random order."""
    rng = random.Random(seed)
    texts = []
    for person in people:
        for _ in range(per_person):
            order = list(SENTENCES)
            rng.shuffle(order)
            texts.append(protocol.text_document(" ".join(SENTENCES[a].format(**person)
                                                         for a in order)))
    return texts


@torch.no_grad()
def recall(model: torch.nn.Module, tokenizer, people: list[dict[str, str]]) -> dict[str, tuple]:
    """Per attribute, the share of people whose recall dialog greedy decoding completes with the
    whole answer, and with its first token: teacher-forced, the argmax at every answer position
    (and at the last, END) is the true next token exactly when greedy decoding writes the answer.
    Whether the model knows the facts the probe looks for, beside what the probe reads."""
    out = {}
    for attribute in protocol.ATTRIBUTES:
        whole = first = 0
        for person in people:
            head = tokenizer(protocol.prompt(attribute, person["name"], with_tool=False))["input_ids"]
            ids = tokenizer(protocol.qa_dialog(attribute, person["name"], person[attribute])
                            )["input_ids"][:-1]  # up to END, not EOS
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            hits = logits[len(head) - 1:-1].argmax(-1) == torch.tensor(ids[len(head):])
            whole += bool(hits.all())
            first += bool(hits[0])
        out[attribute] = (whole / len(people), first / len(people))
    return out


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def top_layer_summary(records: list[dict]) -> str:
    """The top layer's accuracy per attribute beside chance and the controls, and their means."""
    top = max(r["layer"] for r in records)
    rows = sorted((r for r in records if r["layer"] == top),
                  key=lambda r: protocol.ATTRIBUTES.index(r["attribute"]))
    lines = [f"top layer ({top}): {'accuracy':>9}{'chance':>9}{'next tok':>9}{'ctl task':>9}"
             f"{'select.':>9}{'beyond nt':>10}"]
    for name, mine in [(r["attribute"], [r]) for r in rows] + [("mean", rows)]:
        acc = _mean([r["accuracy"] for r in mine])
        nt = _mean([r["control_next_token_accuracy"] for r in mine])
        lines.append(f"{name:<17}{acc:>9.3f}{_mean([r['chance'] for r in mine]):>9.3f}{nt:>9.3f}"
                     f"{_mean([r['control_task_accuracy'] for r in mine]):>9.3f}"
                     f"{_mean([r['selectivity'] for r in mine]):>9.3f}{acc - nt:>10.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--bios", type=int, default=6, help="permuted biographies per person")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--values", choices=sorted(VALUES), default="distinct",
                        help="distinct: the test's values, each its own first letter; shared: "
                        "values sharing first letters in pairs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_byte_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with pytest.MonkeyPatch.context() as patch:  # the test's small value sets
            for name, values in VALUES[args.values].items():
                patch.setattr(world, name, values)
            world.write_world(WorldParams(seed=3, people=args.people, heldout_people=0,
                                          bios_per_person=0, qa_dialogs=True, tool_dialogs=False),
                              root / "world")
        with PeopleDB(root / "world" / "people.duckdb") as db:
            people = db.people("train")
        texts = [json.loads(line)["text"] for line in (root / "world/documents.jsonl").open()]
        texts += permuted_bios(people, args.bios, seed=0)
        random.Random(1).shuffle(texts)
        tokenize_documents(texts, tokenizer, root / "tokens", val_fraction=0.01,
                           loss_on="assistant", seed=0)
        model = build_model(ModelParams(d_model=64, n_layers=args.layers, n_heads=2,
                                        max_seq_len=256), seed=0)
        start = time.perf_counter()
        train(model, TokenSplit.open(root / "tokens", "train"),
              TokenSplit.open(root / "tokens", "val"),
              TrainParams(steps=args.steps, batch_size=32, lr=3e-3, warmup_steps=50,
                          weight_decay=0.0, eval_every=10_000, log_every=10_000,
                          checkpoint_every=0),  # nothing to resume: no checkpoint every 100 steps
              None, tokenizer.pad_token_id, folder=root / "run")
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s")
    model.eval()
    known = recall(model, tokenizer, people)
    print("\nrecall (greedy, all people): whole answer / its first token")
    for attribute, (whole, first) in known.items():
        print(f"{attribute:<14}{whole:>7.3f}{first:>7.3f}")
    print(f"{'mean':<14}{_mean([w for w, _ in known.values()]):>7.3f}"
          f"{_mean([f for _, f in known.values()]):>7.3f}")
    for context in ("bio", "answer"):
        start = time.perf_counter()
        records = probe_model(model, tokenizer, people, context=context)
        print(f"\nlinear probe accuracy at `{context}` ({args.values} values; next tok = the "
              f"next-token baseline; probed in {time.perf_counter() - start:.0f} s)")
        print(format_table([{**r, "checkpoint": FINAL} for r in records], FINAL))
        print(top_layer_summary(records))


if __name__ == "__main__":
    main()
