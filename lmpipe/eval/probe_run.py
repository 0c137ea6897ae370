"""`lmpipe probe RUN`: linear probes on every checkpoint of a training run (and its final model),
written to RUN/linear_probes.jsonl, and the table the command prints. The probes themselves are
lmpipe/eval/linear_probe.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from lmpipe.core import protocol
from lmpipe.core.paths import TOKENIZER
from lmpipe.core.run_folder import SUMMARY_FILE
from lmpipe.data.tokenizer import load_tokenizer
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval.linear_probe import (
    CONTEXTS,
    FINAL,
    MIN_PEOPLE,
    PROBE_FILE,
    Context,
    probe_model,
    require_sklearn,
)
from lmpipe.model.build import load_model
from lmpipe.train.checkpoint import checkpoint_step, list_checkpoints


def _tokenizer_for(run: Path, tokenizer_dir: Path | None):
    # checkpoints hold weights only: the tokenizer is the one saved with the final model, or the
    # tokenize stage's
    candidates = [tokenizer_dir] if tokenizer_dir is not None else [run / "model", TOKENIZER]
    for folder in candidates:
        if (Path(folder) / "tokenizer.json").is_file():
            return load_tokenizer(folder)
    raise FileNotFoundError(f"no tokenizer for {run}: none of {', '.join(map(str, candidates))} "
                            "holds tokenizer.json (--tokenizer DIR)")


def _final_step(run: Path, checkpoints: list[tuple[str, int, Path]]) -> int:
    """The final model's training step: the run summary's `steps`, else its newest checkpoint's."""
    try:
        steps = json.loads((run / SUMMARY_FILE).read_text(encoding="utf-8")).get("steps")
        if isinstance(steps, int):
            return steps
    except (OSError, ValueError, AttributeError):
        pass
    return checkpoints[-1][1] if checkpoints else 0


def run_models(run: str | Path,
               which: Literal["all", "final"] = "all") -> list[tuple[str, int, Path]]:
    """(checkpoint label, step, folder) of what to probe: each checkpoint oldest first, then the
    final model (`RUN/model`) when it exists."""
    run = Path(run)
    if which not in ("all", "final"):
        raise ValueError(f"checkpoints must be 'all' or 'final', got {which!r}")
    found = [(path.name, checkpoint_step(path), path)
             for path in list_checkpoints(run / "checkpoints")]
    models = found if which == "all" else []
    if (run / "model" / "config.json").is_file():
        models.append((FINAL, _final_step(run, found), run / "model"))
    if not models:
        raise FileNotFoundError(f"{run}: no model to probe (neither model/config.json nor "
                                "checkpoints/step_*/)")
    return models


def _load(folder: Path, tokenizer):
    if folder.name != "model":  # a checkpoint: save_pretrained weights, no tokenizer
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    model, _ = load_model(folder)  # the final model may be a packed ternary or int8 export
    return model


def probe_run(run: str | Path, db_path: str | Path, people: int | None = None, seed: int = 0,
              checkpoints: Literal["all", "final"] = "all", context: Context = "bio",
              test_fraction: float = 0.3, tokenizer_dir: str | Path | None = None,
              batch_size: int = 256) -> tuple[list[dict[str, Any]], Path]:
    """Probe every checkpoint and the final model of `run` on its world's trained people (at most
    `people` of them, a seeded sample); write `RUN/linear_probes.jsonl`. Returns (records, path)."""
    run = Path(run)
    require_sklearn()
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if people is not None and people < MIN_PEOPLE:
        raise ValueError(f"people must be at least {MIN_PEOPLE}, got {people}")
    models = run_models(run, checkpoints)  # fail on a wrong folder before loading anything
    with PeopleDB(db_path) as db:  # people the model was trained on, as the eval stage samples them
        trained = db.people("train") if people is None else sample_people(db, "train", people, seed)
    tokenizer = _tokenizer_for(run, Path(tokenizer_dir) if tokenizer_dir else None)
    records = []
    for label, step, folder in models:
        model = _load(folder, tokenizer)
        for r in probe_model(model, tokenizer, trained, context=context,
                             test_fraction=test_fraction, seed=seed, batch_size=batch_size):
            records.append({"step": step, "checkpoint": label, **r, "context": context})
        del model
    path = run / PROBE_FILE
    # written whole then renamed: a rerun replaces the file, a crash never leaves half of one
    tmp = path.with_name(f".{PROBE_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return records, path


# -- reading the results -------------------------------------------------------------------------
def _cell(value: Any, width: int = 9) -> str:
    return f"{value:>{width}.3f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def _mean(values: Iterable[Any]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return float(np.mean(values)) if values else None


def format_table(records: Sequence[Mapping[str, Any]], checkpoint: str = FINAL) -> str:
    """Accuracy per attribute (rows) and layer (columns) for one checkpoint, chance, the
    next-token baseline (`next tok`, when recorded), n_test and the number of classes; then, when
    recorded, the selectivity (accuracy - control task accuracy) per attribute and layer."""
    rows = [r for r in records if r["checkpoint"] == checkpoint] if records and \
        "checkpoint" in records[0] else list(records)
    if not rows:
        return f"(no probe results for {checkpoint})"
    layers = sorted({r["layer"] for r in rows})
    attributes = [a for a in protocol.ATTRIBUTES if any(r["attribute"] == a for r in rows)]
    cell = {(r["attribute"], r["layer"]): r for r in rows}
    first = {a: next(cell[(a, k)] for k in layers if (a, k) in cell) for a in attributes}
    controls = any("control_task_accuracy" in r for r in rows)
    layer_head = f"{'attribute':<14}" + "".join(f"{f'layer {k}':>9}" for k in layers)

    def per_layer(field: str) -> list[str]:
        lines = [f"{a:<14}" + "".join(_cell(cell[(a, k)].get(field)) if (a, k) in cell
                                      else f"{'-':>9}" for k in layers) for a in attributes]
        means = [_mean(cell[(a, k)].get(field) for a in attributes if (a, k) in cell)
                 for k in layers]
        return lines + [f"{'mean':<14}" + "".join(_cell(m) for m in means)]

    head = layer_head + f"{'chance':>9}" + (f"{'next tok':>9}" if controls else "") + \
        f"{'n_test':>8}{'classes':>9}"
    body = per_layer("accuracy")
    # the columns that do not depend on the layer, after each attribute's row and the mean's
    for i, a in enumerate(attributes):
        body[i] += _cell(first[a]["chance"]) + \
            (_cell(first[a].get("control_next_token_accuracy")) if controls else "") + \
            f"{first[a]['n_test']:>8}{first[a]['n_classes']:>9}"
    body[-1] += _cell(_mean(first[a]["chance"] for a in attributes)) + \
        (_cell(_mean(first[a].get("control_next_token_accuracy") for a in attributes))
         if controls else "")
    lines = [head, *body]
    if controls:
        lines += ["selectivity (accuracy - control task accuracy):", layer_head,
                  *per_layer("selectivity")]
    return "\n".join(lines)
