"""Evaluation of saved models on the people world: loss, recall without the tool, accuracy with it.

Recall asks a trained person's attribute with no tool available: the answer must come from the
weights. Tool accuracy offers the database: the model must write a valid query, and the evaluator
runs it, inserts the reply and lets the model finish. On held-out people, who never appear in
training text, only tool use can succeed. Answers are scored by exact match.

Tool calls (`tool_call_records`), over the n questions asked with the tool:

    tool_call_rate             well-formed queries (protocol.parse_query) for the asked person
                               and the asked attribute / n
    tool_call_wrong_person     well-formed queries naming another person / n
    tool_call_wrong_attribute  well-formed queries asking another attribute / n

(a query wrong in both counts in both; no call or a malformed one counts in none). A database
reply alone does not make a call valid: the database answers any existing person's attribute.

Bits per byte (`val_bpb`) is measured on exactly the targets the validation loss is
(lmpipe/train/losses.py: the same `eval_batches`), over the UTF-8 bytes of their text, special
tokens counting 0 bytes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lmpipe.core import protocol
from lmpipe.data.batching import make_batches
from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval.conversations import (
    cache_records,
    conversation_cache,
    conversation_records,
    conversation_trees,
    run_conversations,
)
from lmpipe.eval.generate import Exchange, answer_questions
from lmpipe.eval.harness import harness_records
from lmpipe.eval.knowledge import knowledge_records
from lmpipe.eval.linear_probe import eval_records
from lmpipe.eval.params import EvalParams
from lmpipe.eval.task_names import VAL_TASKS, expand
from lmpipe.eval.text_tasks import validation_texts
from lmpipe.model.build import count_parameters, load_model, tensor_headers
from lmpipe.quant.packing import INT8_FILE
from lmpipe.train.losses import evaluate_split
from lmpipe.train.params import TrainParams

# every model and checkpoint is scored on the same validation batches
VAL_BATCH_SIZE = 64


def validation_batches(split: TokenSplit, tp: TrainParams, tokenizer: Any, model: Any) -> Any:
    """The validation batches the eval stage and the checkpoint evals score a model on: read the
    way `tp` trains (sampling, block size, loss positions), VAL_BATCH_SIZE rows, seed 0. The
    training loop's own validation loss uses the run's batch size and seed instead."""
    return make_batches(split, tp.sampling, VAL_BATCH_SIZE, tp.block_size, 0,
                        tokenizer.pad_token_id, getattr(model.config, "max_position_embeddings", None),
                        tp.loss_on)


def questions_for(people: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """(attribute, name, expected answer) for every attribute of every person."""
    return [(a, p["name"], p[a]) for p in people for a in protocol.ATTRIBUTES]


def accuracy_records(metric: str, split: str, questions: list[tuple[str, str, str]],
                     exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """Exact-match accuracy overall and per attribute, as eval records."""
    hits: dict[str | None, list[int]] = defaultdict(list)
    for (attribute, _, expected), ex in zip(questions, exchanges):
        correct = int(ex.answer.strip() == expected)
        hits[None].append(correct)
        hits[attribute].append(correct)
    return [{"metric": metric, "split": split, "attribute": attr,
             "value": sum(v) / len(v), "n": len(v)} for attr, v in hits.items()]


TOOL_CALL_METRICS = ("tool_call_rate", "tool_call_wrong_person", "tool_call_wrong_attribute")


def tool_call_kind(attribute: str, name: str, query: str | None) -> set[str]:
    """Which of TOOL_CALL_METRICS one exchange counts in (module docstring): the query the model
    wrote, parsed with the protocol's grammar, against the asked attribute and person."""
    if query is None:
        return set()
    try:
        parsed = protocol.parse_query(query)
    except protocol.QueryError:
        return set()
    kinds = set()
    if parsed.name != name:
        kinds.add("tool_call_wrong_person")
    if parsed.attribute != attribute:
        kinds.add("tool_call_wrong_attribute")
    return kinds or {"tool_call_rate"}


def tool_call_records(split: str, questions: list[tuple[str, str, str]],
                      exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """The rate of valid tool calls, and of well-formed calls for the wrong person or attribute,
    over every question asked (module docstring), as eval records."""
    counts = dict.fromkeys(TOOL_CALL_METRICS, 0)
    for (attribute, name, _), ex in zip(questions, exchanges):
        for kind in tool_call_kind(attribute, name, ex.query):
            counts[kind] += 1
    n = len(exchanges)
    return [{"metric": metric, "split": split, "attribute": None, "value": count / max(n, 1),
             "n": n} for metric, count in counts.items()]


def score_questions(model, tokenizer, split: str, people: list[dict[str, str]],
                    db: PeopleDB | None, max_new_tokens: int, batch_size: int
                    ) -> tuple[list[dict[str, Any]], list[Exchange]]:
    """Ask every attribute of `people`, greedily: from memory (`recall`) without `db`, with the
    database tool (`tool_accuracy`, plus the tool-call rates) with it. Returns the eval records,
    overall and per attribute, and the transcripts. The one scorer of the eval stage, checkpoint
    evals (lmpipe/eval/checkpoints.py) and the training hook (lmpipe/eval/train_hook.py)."""
    questions = questions_for(people)
    exchanges = answer_questions(model, tokenizer, [(a, n) for a, n, _ in questions], db,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
    metric = "recall" if db is None else "tool_accuracy"
    records = accuracy_records(metric, split, questions, exchanges)
    if db is not None:
        records += tool_call_records(split, questions, exchanges)
    return records, exchanges


def evaluate_model(model_dir: str | Path, db: PeopleDB, val_split: TokenSplit, params: EvalParams,
                   trained: list[dict[str, str]], heldout: list[dict[str, str]],
                   val_sampling: TrainParams, harness_dir: Path | None = None,
                   knowledge: bool = True, scratch_dir: Path | None = None
                   ) -> tuple[list[dict[str, Any]], dict[str, list[Exchange]]]:
    """All eval records for one model, plus the transcripts they were scored on.

    `harness_dir`: where the local lm-eval tasks of `params.harness_tasks` are written (people,
    validation text);
    `scratch_dir`: where the conversation cache pages out to disk under a memory budget (a
    folder of its own, removed when the split is scored; default: the system's temp directory);
    `knowledge`: measure knowledge bits (`params.knowledge_bits` as resolved for the world,
    lmpipe/runs/evaluation.py)."""
    model, tokenizer = load_model(model_dir)
    # every model is scored on the same batches, read the way the teacher was trained
    tp = val_sampling
    # loss and bits per byte from the same targets (the first eval_batches batches)
    val = evaluate_split(model, validation_batches(val_split, tp, tokenizer, model),
                         max_batches=tp.eval_batches, tokenizer=tokenizer)
    val_loss = val.loss
    records = [
        {"metric": "val_loss", "split": "val", "attribute": None, "value": val_loss, "n": None},
        {"metric": "val_ppl", "split": "val", "attribute": None, "value": math.exp(val_loss), "n": None},
        {"metric": "val_bpb", "split": "val", "attribute": None, "value": val.bits_per_byte,
         "n": None},
        {"metric": "parameters", "split": "model", "attribute": None,
         "value": float(count_parameters(model)), "n": None},
        *size_records(Path(model_dir)),
    ]
    if db is not None and knowledge:  # what the weights alone hold, in bits (eval/knowledge.py)
        records += knowledge_records(model, tokenizer, db, count_parameters(model),
                                     params.batch_size, people=trained)
    if params.linear_probe and db is not None:  # what each layer holds linearly about a person
        probed = sample_people(db, "train", params.linear_probe_people, params.seed)
        records += eval_records(model, tokenizer, probed, params.linear_probe_context,
                                params.seed, params.batch_size)
    transcripts = {}
    for metric, split, people, tool in [("recall", "trained", trained, None),
                                        ("tool_accuracy", "trained", trained, db),
                                        ("tool_accuracy", "heldout", heldout, db)]:
        if people:
            scored, transcripts[f"{metric}/{split}"] = score_questions(
                model, tokenizer, split, people, tool, params.max_new_tokens, params.batch_size)
            records += scored
    if params.conversations and db is not None:
        for split, people in (("trained", trained), ("heldout", heldout)):
            if people:
                records += score_conversations(model, tokenizer, split,
                                               people[:params.conversations], db, params,
                                               scratch_dir)
    if params.harness_tasks:
        texts = (validation_texts(val_split.tokens, val_split.docs, tokenizer)
                 if any(t in VAL_TASKS for t in expand(params.harness_tasks)) else None)
        records += harness_records(model_dir, params, db, trained, harness_dir, texts)
    return records, transcripts


def score_conversations(model, tokenizer, split: str, people: list[dict[str, str]],
                        db: PeopleDB, params: EvalParams,
                        pages_under: Path | None = None) -> list[dict[str, Any]]:
    """Conversation trees about `people`, asked through the tool (lmpipe/eval/conversations.py):
    conversation_accuracy overall and per turn; with `params.conversation_cache`, one prefix
    cache (KV, or a recurrent model's state snapshots) for the split's levels and its
    prefix_cache_* counters; under `params.conversation_cache_mb` it pages out to a folder of
    its own under `pages_under`."""
    trees = conversation_trees(people, params.conversation_turns, params.conversation_branches,
                               params.seed)
    with conversation_cache(model, params.conversation_cache, params.conversation_cache_mb,
                            pages_under) as cache:
        answered = run_conversations(model, tokenizer, trees, db.answer, params.max_new_tokens,
                                     params.batch_size, params.tool_error_rate, params.seed,
                                     prefix_cache=cache)
        counters = cache_records(split, cache.stats()) if cache is not None else []
    return conversation_records(split, answered) + counters


def size_records(model_dir: Path) -> list[dict[str, Any]]:
    """Bytes of the weights file(s) on disk, and of the tensors in them (dtype size x elements,
    packed codes as stored; of an int8 directory, its compact file only): a quantized model beside
    its full-precision twin."""
    file_bytes, tensor_bytes = 0, 0
    widths = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8}
    # an int8 directory's model.safetensors is the dequantized float twin of its compact file
    compact = model_dir / INT8_FILE
    for path in [compact] if compact.is_file() else sorted(model_dir.glob("*.safetensors")):
        file_bytes += path.stat().st_size
        tensor_bytes += sum(widths.get(t["dtype"], 4) * math.prod(t["shape"])
                            for t in tensor_headers(path).values())
    return [{"metric": "file_bytes", "split": "model", "attribute": None,
             "value": float(file_bytes), "n": None},
            {"metric": "weight_bytes", "split": "model", "attribute": None,
             "value": float(tensor_bytes), "n": None}]


def headline(records: list[dict[str, Any]]) -> dict[str, float]:
    """The overall figures of one model, keyed `metric` or `metric_split` (for DVC metrics).
    Per-turn rows and the prefix cache's counters (the eval's work, not the model's skill) stay
    in evals.jsonl only."""
    out = {}
    for r in records:
        if r["attribute"] is None and r.get("turn") is None and \
                not r["metric"].startswith("prefix_cache_"):
            key = r["metric"] if r["split"] in ("val", "model") else f"{r['metric']}_{r['split']}"
            out[key] = round(r["value"], 6)
    return out
