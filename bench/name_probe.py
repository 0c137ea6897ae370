"""Experiment: does the linear probe at the name token come alive when biographies are permuted?

Physics of LM 3.1 finds attributes linearly readable at a person's name only when the training
biographies are augmented (several per person, sentences in random order). This trains a byte-level
model on the small 4-values-per-attribute world of tests/test_linear_probe.py, with `--bios` such
biographies per person (each fact a sentence starting with the name, in random order) beside the
Q&A dialogs, then prints the probe accuracy per layer at the name (`bio`) and at the answer
position (`answer`). Usage: `.venv/bin/python bench/name_probe.py [--people 60 --bios 6
--steps 3000 --layers 4]` (~9 min on 2 cores with the defaults).
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

from lmpipe import protocol, world  # noqa: E402
from lmpipe.config import ModelParams, TrainParams, WorldParams  # noqa: E402
from lmpipe.linear_probe import FINAL, format_table, probe_model  # noqa: E402
from lmpipe.model import build_model  # noqa: E402
from lmpipe.tokenizer import build_byte_tokenizer  # noqa: E402
from lmpipe.tokens import TokenSplit, tokenize_documents  # noqa: E402
from lmpipe.tooldb import PeopleDB  # noqa: E402
from lmpipe.train import train  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--bios", type=int, default=6, help="permuted biographies per person")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_byte_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with pytest.MonkeyPatch.context() as patch:  # the test's small value sets
            for name, values in TEST_VALUES.items():
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
                          weight_decay=0.0, eval_every=10_000, log_every=10_000),
              None, tokenizer.pad_token_id, folder=root / "run")
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s")
    model.eval()
    for context in ("bio", "answer"):
        records = probe_model(model, tokenizer, people, context=context)
        print(f"\nlinear probe accuracy at `{context}`")
        print(format_table([{**r, "checkpoint": FINAL} for r in records], FINAL))


if __name__ == "__main__":
    main()
