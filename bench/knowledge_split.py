"""Issue 15, parts 1 and 2: how many trained facts reach training text, and knowledge bits'
limits, on the flagship recipe's worlds (recipes/in-tool-learning/params.yaml, its seed).

For world.people 25, 100 and 400 in both of the grid's modes (tool: tool dialogs only; no tool:
one biography + Q&A), prints the share of the facts the evaluator counts as trained (every
attribute of every trained person) that are

  * stated by some training document (any kind: a biography states all six), and
  * asked by their own training dialog (the Q&A or tool dialog of that fact: what recall and
    tool accuracy ask, so this share is recall's ceiling),

before (the per-document split lmpipe used until issue 15: `split_documents` over
documents.jsonl, val_fraction 0.05, seed 0) and after (the world's split, `world_split`: both
must be 1.0). Then the knowledge bits (lmpipe/eval/knowledge.py) at 25 people of two crafted models
(tests/eval/test_knowledge.py): an oracle (all mass on the truth) and a model uniform over each
attribute's values, beside N·Σ_a log2|V_a| and the oracle's figure under the old |V_a| (the
distinct values present in the world). Usage: `.venv/bin/python bench/knowledge_split.py`.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_knowledge import Crafted, Trie, value_list  # noqa: E402

from lmpipe.core import protocol  # noqa: E402
from lmpipe.data.tokenizer import build_byte_tokenizer  # noqa: E402
from lmpipe.data.tokens import read_documents, split_documents, world_split  # noqa: E402
from lmpipe.data.tooldb import PeopleDB  # noqa: E402
from lmpipe.data.world import write_world  # noqa: E402
from lmpipe.eval.knowledge import knowledge_records  # noqa: E402
from lmpipe.params.config import load_params  # noqa: E402

RECIPE = ROOT / "recipes/in-tool-learning/params.yaml"
MODES = {"tool": ["world.tool_dialogs=true", "world.qa_dialogs=false", "world.bios_per_person=0"],
         "no tool": ["world.tool_dialogs=false", "world.qa_dialogs=true",
                     "world.bios_per_person=1"]}


def coverage(train_docs: list[dict], trained: list[dict]) -> tuple[float, float]:
    """(share of trained facts stated by a training document, share whose own dialog trains)."""
    stated, asked = set(), set()
    for doc in train_docs:
        stated |= {(doc["name"], a) for a, v in doc["facts"].items() if v in doc["text"]}
        if doc["kind"] in ("qa", "tool"):
            asked.add((doc["name"], doc["attribute"]))
    facts = {(p["name"], a) for p in trained for a in protocol.ATTRIBUTES}
    return len(facts & stated) / len(facts), len(facts & asked) / len(facts)


def main() -> None:
    start = time.time()
    print("| mode | people (facts) | before: stated / own dialog | after: stated / own dialog "
          "| val docs before / after |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, overrides in MODES.items():
            for people in (25, 100, 400):
                params = load_params(RECIPE, [*overrides, f"world.people={people}",
                                              f"eval.trained_people={min(people, 100)}"])
                folder = Path(tmp) / f"{mode}-{people}"
                write_world(params.world, folder)
                docs = read_documents(folder)
                with PeopleDB(folder / "people.duckdb") as db:
                    trained = db.people("train")
                tp = params.tokenize
                # before: documents.jsonl (identical to before issue 15), split per document
                train_docs = [d for d in docs if d["split"] == "train"]
                kept, val_idx = split_documents(len(train_docs), tp.val_fraction, tp.seed)
                before = coverage([train_docs[i] for i in kept], trained)
                chosen, _ = world_split(docs, tp.val_fraction, tp.seed, params.world.people)
                after = coverage([d for d in chosen if d["split"] == "train"], trained)
                n_val = sum(d["split"] == "val" for d in chosen)
                print(f"| {mode} | {people} ({6 * people:,}) | {before[0]:.3f} / {before[1]:.3f} "
                      f"| {after[0]:.3f} / {after[1]:.3f} | {len(val_idx)} / {n_val} |")
        # knowledge bits at 25 people (the no-tool world: the mode that trains recall)
        folder = Path(tmp) / "no tool-25"
        tokenizer = build_byte_tokenizer()
        with PeopleDB(folder / "people.duckdb") as db:
            trained = db.people("train")
            everyone = trained + db.people("heldout")
            uniform = {a: Trie({v: 1 / len(value_list(a)) for v in value_list(a)})
                       for a in protocol.ATTRIBUTES}
            figures = {}
            for name, belief in (("oracle", lambda p, a: Trie({p[a]: 1.0})),
                                 ("uniform over the values", lambda p, a: uniform[a])):
                began = time.time()
                model = Crafted(tokenizer, {(a, p["name"]): belief(p, a) for p in trained
                                            for a in protocol.ATTRIBUTES})
                records = knowledge_records(model, tokenizer, db, parameters=1)
                figures[name] = ([r["value"] for r in records if r["attribute"] is None][0],
                                 time.time() - began)
        full = len(trained) * sum(math.log2(len(value_list(a))) for a in protocol.ATTRIBUTES)
        old = len(trained) * sum(math.log2(len({p[a] for p in everyone}))
                                 for a in protocol.ATTRIBUTES)
    print(f"\nknowledge bits at {len(trained)} people ({6 * len(trained)} facts): "
          f"N·Σ log2|V_a| = {full:.1f}")
    for name, (bits, seconds) in figures.items():
        print(f"  {name}: {bits:.1f} bits ({seconds:.1f} s to score)")
    print(f"  oracle under the old |V_a| (distinct values among the {len(everyone)} people): "
          f"{old:.1f}")
    print(f"\ntotal {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
