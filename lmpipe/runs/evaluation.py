"""The eval stage's whole run: every model on the same questions and batches, one eval run folder
(per-question records, transcripts, samples) and the DVC metrics file of headline figures.

After scoring, `evaluate_pipeline` writes every model's complete model card, with the comparison
table and model-index results from it, to `runs/eval/cards/<model>/README.md`. The cards live in
the eval stage's own output on purpose: rewriting `runs/<stage>/model/README.md` would change
another stage's DVC output, so DVC would report that stage as modified and rerun it. The cards the
training stages write into their model directories carry only their own run's figures.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lmpipe.core.outputs import staged, write_atomic
from lmpipe.core.paths import METRICS, TOKENS, WORLD, model_dir, run_dir
from lmpipe.core.pipeline_models import EXTRA, MADE_FROM, MODELS, STAGES
from lmpipe.core.progress import progress
from lmpipe.core.run_folder import EVALS_FILE, SUMMARY_FILE, RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval.evaluate import evaluate_model, headline
from lmpipe.eval.generate import sample_text
from lmpipe.eval.harness import relocate_people_tasks
from lmpipe.model.build import load_model
from lmpipe.model.card import write_model_card
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
                                                      knowledge=knowledge, scratch_dir=out)
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


def write_cards(models: dict[str, Path], table: dict[str, dict[str, float]], params: Params,
                out: Path) -> dict[str, Path]:
    """`out/<model>/README.md` for every evaluated model, each with the whole comparison table."""
    resolved = params.model_dump(mode="json")
    cards = {}
    for name, folder in models.items():
        summary_path = Path(folder).parent / SUMMARY_FILE  # the run folder of that model
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        source = MADE_FROM.get(name)
        base = (str(models[source]) if source in models
                else (resolved.get(name) or {}).get("pretrained"))
        cards[name] = write_model_card(folder, name=name, stage=STAGES.get(name, "train"),
                                       params=resolved, summary=summary, base_model=base,
                                       comparison=table, out=out / name / "README.md")
    return cards


def evaluate_pipeline(params: Params, names: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """The eval stage: the models `names` (lmpipe/core/pipeline_models.py), else all four and the
    quantize stage's comparison models it wrote, scored into `runs/eval` with their cards, and
    their headline figures in `metrics/eval.json`; returns those figures."""
    models = {name: model_dir(MODELS[name]) for name in names or MODELS}
    if not names:
        models |= {name: run_dir(path) for name, path in EXTRA.items()
                   if (run_dir(path) / "config.json").is_file()}
    # the run folder and the metrics file are replaced together, only once every model is scored
    with staged(run_dir("eval")) as out:
        table = evaluate_run(models, WORLD / "people.duckdb", TOKENS, params, out)
        write_cards(models, table, params, out / "cards")
        staged_tasks = (out / "harness_tasks").resolve()
    if (run_dir("eval") / "harness_tasks").is_dir():
        relocate_people_tasks(run_dir("eval") / "harness_tasks", staged_tasks)
    write_atomic(METRICS / "eval.json", json.dumps(table, indent=2) + "\n")
    return table
