"""The eval stage's whole run: every model on the same questions and batches, one eval run folder
(per-question records, transcripts, samples) and the DVC metrics file of headline figures."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

from lmpipe.core.progress import progress
from lmpipe.core.run_folder import EVALS_FILE, RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval.evaluate import evaluate_model, headline
from lmpipe.eval.generate import sample_text
from lmpipe.model.build import load_model
from lmpipe.params.config import Params


def measures_knowledge(params: Params) -> bool:
    """`eval.knowledge_bits` resolved: `auto` measures knowledge bits only when the training text
    states facts outside tool replies (Q&A dialogs or biographies)."""
    if params.eval.knowledge_bits != "auto":
        return params.eval.knowledge_bits
    return params.world.qa_dialogs or params.world.bios_per_person > 0


def evaluate_run(models: dict[str, Path], db_path: Path, tokens_dir: Path, params: Params,
                 out: Path, metrics_path: Path | None = None) -> dict[str, dict[str, float]]:
    """Evaluate every model on the same questions; write the eval run folder and DVC metrics.

    Without a people world (`data.source` shakespeare or corpus) there is no database and no
    questions: the models are compared on validation loss and perplexity only.
    """
    for name, folder in models.items():
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: model '{name}' not found (run its stage first)")
    val_split = TokenSplit.open(tokens_dir, "val")
    resolved = {"run": {"stage": "eval", "name": "eval"}, **params.model_dump(mode="json")}
    table: dict[str, dict[str, float]] = {}
    people_world = params.data.source == "people"
    with (PeopleDB(db_path) if people_world else contextlib.nullcontext()) as db, \
            RunLog(out, "eval", "eval", resolved) as run:
        ep = params.eval
        knowledge = measures_knowledge(params)
        trained = sample_people(db, "train", ep.trained_people, ep.seed) if db else []
        heldout = sample_people(db, "heldout", ep.heldout_people, ep.seed) if db else []
        (out / "transcripts").mkdir(exist_ok=True)
        with open(out / EVALS_FILE, "w", encoding="utf-8") as evals:
            for name, folder in progress(models.items(), desc="eval", unit="model"):
                records, transcripts = evaluate_model(folder, db, val_split, ep, trained, heldout,
                                                      params.teacher.train,
                                                      harness_dir=out / "harness_tasks",
                                                      knowledge=knowledge)
                for r in records:
                    evals.write(json.dumps({"model": name, **r}) + "\n")
                with open(out / "transcripts" / f"{name}.jsonl", "w", encoding="utf-8") as f:
                    for task, exchanges in transcripts.items():
                        for ex in exchanges:
                            f.write(json.dumps({"task": task, **asdict(ex)}) + "\n")
                table[name] = headline(records)
                if ep.sample_prompt:
                    model, tokenizer = load_model(folder)
                    text = sample_text(model, tokenizer, ep.sample_prompt, ep.sample_tokens,
                                       ep.temperature, ep.top_k, ep.seed)
                    with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps({"model": name, "prompt": ep.sample_prompt,
                                            "text": text}) + "\n")
        run.finish(models=list(models), trained_people=len(trained), heldout_people=len(heldout))
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(table, indent=2) + "\n")
    return table
