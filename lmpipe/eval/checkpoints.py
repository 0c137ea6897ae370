"""Evaluating a training run's checkpoints while it trains: the eval itself, not its scheduling.

`evaluate_checkpoint(config, checkpoint_dir)` loads one checkpoint's weights (the
`checkpoints/step_N/` folders lmpipe/train/checkpoint.py writes: `save_pretrained` safetensors plus
`trainer_state.json`), measures validation loss and tool accuracy on a small fixed sample of
trained and held-out people, and appends the records, tagged with the checkpoint's `step`, to the
run folder's `evals.jsonl` — the run's eval series, which `lmpipe index` loads with its step and
the report draws as accuracy against step. It also appends one line per eval to
`checkpoint_evals.jsonl` (when it ran, and the training step logged at its start and end: the
evidence that training kept going meanwhile). `pending_checkpoints` lists the finished
checkpoints not evaluated yet. The scheduling (a Prefect flow polling the folder) is
flows/async_eval.py.

`CheckpointEvalConfig` holds only strings and numbers, so it crosses process and Prefect task
boundaries as JSON; the database is opened read-only inside the eval, never carried in the config.
torch, transformers and the eval helpers are imported inside the functions that use them, so the
watcher starts in well under a second and pays for them once, in `preload`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lmpipe.core.jsonl import append_jsonl, read_jsonl
from lmpipe.core.outputs import staging_dir
from lmpipe.core.run_folder import CHECKPOINT_EVALS_FILE, EVALS_FILE, METRICS_FILE, PARAMS_FILE
from lmpipe.train.checkpoint import checkpoint_step, list_checkpoints

# validation-loss batch size, as evaluate_model uses, so the numbers are comparable


class CheckpointVanished(FileNotFoundError):
    """The checkpoint was deleted (keep-last-K pruning) before its weights could be read."""


class CheckpointEvalConfig(BaseModel):
    """Everything an eval of one checkpoint needs, as plain JSON values (paths are strings)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(description="the training run folder (holds checkpoints/, metrics.jsonl)")
    db_path: str | None = Field(
        None, description="the people world's DuckDB file; None = no world: validation loss only")
    tokens_dir: str = Field(description="the tokenize stage's output (val split, tokenizer/)")
    run_name: str | None = Field(
        None, description="the `model` of the eval records; default: params.json run.name, else "
        "the run folder's name")
    trained_people: int = Field(16, ge=0, description="trained people asked (tool accuracy)")
    heldout_people: int = Field(16, ge=0, description="held-out people asked (tool accuracy)")
    seed: int = Field(0, description="fixes the people sample: every step is asked the same ones")
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1, description="questions generated per batch")
    val_batches: int = Field(0, ge=0, description="validation batches for the loss; 0 = whole split")
    threads: int = Field(1, ge=0, description="torch threads for the eval; 0 keeps torch's default")


# -- the run folder --------------------------------------------------------------------------------
def pending_checkpoints(run_folder: str | Path, done_steps: set[int]) -> list[Path]:
    """Finished checkpoints of the run whose step is not in `done_steps`, oldest first.

    Only renamed `step_N` folders holding `trainer_state.json` count: the checkpoint writer fills
    a hidden `.tmp-...` folder and renames it into place, so a folder still being written is never
    listed. The folder may vanish under us (pruning, or a fresh run clearing it): that is no error.
    """
    try:
        found = list_checkpoints(Path(run_folder) / "checkpoints")
    except FileNotFoundError:  # the checkpoints folder was removed while we listed it
        return []
    return [p for p in found if checkpoint_step(p) not in done_steps]


def live_run_folder(run_dir: str | Path) -> Path:
    """Where a run's files are now: its staging folder while it trains (lmpipe/core/outputs.py), the
    run folder itself once it has finished and been published."""
    staging = staging_dir(run_dir)
    return staging if staging.is_dir() else Path(run_dir)


def evaluated_steps(run_folder: str | Path) -> set[int]:
    """Steps whose checkpoint has been evaluated (per `checkpoint_evals.jsonl`)."""
    return {int(r["step"]) for r in read_jsonl(Path(run_folder) / CHECKPOINT_EVALS_FILE)[0]
            if r.get("status") == "done" and isinstance(r.get("step"), int)}


def eval_log(run_folder: str | Path) -> list[dict[str, Any]]:
    """Every line of the run's `checkpoint_evals.jsonl`: step, started_at/ended_at (unix time),
    seconds, train_step_at_start/_end (last step in metrics.jsonl then), status."""
    return read_jsonl(Path(run_folder) / CHECKPOINT_EVALS_FILE)[0]


def latest_logged_step(run_folder: str | Path) -> int | None:
    """The step of the last complete record in the run's metrics.jsonl (None before the first).

    Reads only the file's tail: the training process appends to it while we read.
    """
    path = Path(run_folder) / METRICS_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a line cut by the seek or still being written
        if isinstance(step, int):
            return step
    return None


def clear_eval_series(run_folder: str | Path) -> None:
    """Delete the run's step-tagged eval series: a training run starting afresh makes it stale
    (as RunLog.rewind(0) makes its metrics)."""
    for name in (EVALS_FILE, CHECKPOINT_EVALS_FILE):
        (Path(run_folder) / name).unlink(missing_ok=True)


def _run_name(config: CheckpointEvalConfig, run: Path) -> str:
    if config.run_name:
        return config.run_name
    params = run / PARAMS_FILE
    if params.is_file():
        try:
            name = json.loads(params.read_text(encoding="utf-8")).get("run", {}).get("name")
        except (ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return run.name


def _val_sampling(section: dict[str, Any], checkpoint: Path):
    """The run's own TrainParams (sampling, block size, loss_on) from the checkpoint's params.json:
    the validation loss is read the way the run trains, like the trainer's own val loss."""
    from lmpipe.train.params import TrainParams

    train = section.get("train") or section.get("distill", {}).get("train") or {}
    try:
        return TrainParams.model_validate(train)
    except ValueError as exc:
        raise ValueError(f"{checkpoint / 'params.json'}: its train section is invalid: {exc}") from None


def preload() -> None:
    """Import what an eval needs (torch, transformers, the eval helpers: seconds of CPU) now, so
    the first eval does not pay for it while competing with training for the cores."""
    import transformers  # noqa: F401

    import lmpipe.eval.evaluate  # noqa: F401
    import lmpipe.eval.generate  # noqa: F401


# -- one eval --------------------------------------------------------------------------------------
def _load_checkpoint_model(checkpoint: Path):
    """The checkpoint's model (float32, eval mode), its trainer state and its params section."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per checkpoint is noise

    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        section = json.loads((checkpoint / PARAMS_FILE).read_text(encoding="utf-8"))
        # config.json + model.safetensors: the save_pretrained half of the checkpoint. Once the
        # weights file is open, pruning cannot take it from us (an unlinked file stays readable).
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    except Exception as exc:  # whatever a half-deleted folder makes the loaders raise
        time.sleep(0.2)  # a pruning rmtree caught midway: let it finish before judging
        if not checkpoint.is_dir() or not (checkpoint / "trainer_state.json").is_file():
            raise CheckpointVanished(f"{checkpoint}: checkpoint deleted before it could be "
                                     "evaluated (pruned by keep_checkpoints?)") from exc
        raise
    return model.eval(), state, section


def _tokenizer(config: CheckpointEvalConfig, run: Path):
    from lmpipe.data.tokenizer import load_tokenizer

    for folder in (Path(config.tokens_dir) / "tokenizer", run / "model"):
        if (folder / "tokenizer.json").is_file():
            return load_tokenizer(folder)
    raise FileNotFoundError(f"no tokenizer for {run}: neither {Path(config.tokens_dir) / 'tokenizer'} "
                            f"nor {run / 'model'} holds tokenizer.json (config.tokens_dir)")


def evaluate_checkpoint(config: CheckpointEvalConfig, checkpoint_dir: str | Path) -> list[dict[str, Any]]:
    """Evaluate one checkpoint, append its records to the run's evals.jsonl, and return them.

    Records: val_loss (split val), and when the config names a people world, tool_accuracy,
    tool_call_rate, tool_call_wrong_person and tool_call_wrong_attribute (lmpipe/eval/evaluate.py:
    a valid call is a well-formed query for the asked person and attribute) on trained and
    held-out people (attribute None), each with `step`. Raises
    CheckpointVanished if the checkpoint is pruned before its weights are read.
    """
    started = time.time()
    import torch

    from lmpipe.data.tokens import TokenSplit
    from lmpipe.data.tooldb import PeopleDB, sample_people
    from lmpipe.eval.evaluate import VAL_BATCH_SIZE, score_questions, validation_batches
    from lmpipe.train.losses import evaluate_loss

    checkpoint = Path(checkpoint_dir)
    run = live_run_folder(config.run_dir)
    train_step_at_start = latest_logged_step(run)
    if config.threads:
        # process-wide: the watcher process does nothing else heavy; training has its own process
        torch.set_num_threads(config.threads)
    if not checkpoint.is_dir():
        raise CheckpointVanished(f"{checkpoint}: checkpoint no longer exists (pruned?)")
    step = checkpoint_step(checkpoint)
    model, state, section = _load_checkpoint_model(checkpoint)
    if state.get("step") != step:
        raise ValueError(f"{checkpoint / 'trainer_state.json'}: step {state.get('step')} does not "
                         f"match the folder name")
    tokenizer = _tokenizer(config, run)
    tp = _val_sampling(section, checkpoint)
    val_split = TokenSplit.open(Path(config.tokens_dir), "val")
    with torch.no_grad():
        val_loss = evaluate_loss(model, validation_batches(val_split, tp, tokenizer, model),
                                 VAL_BATCH_SIZE, config.val_batches)
    records: list[dict[str, Any]] = [
        {"metric": "val_loss", "split": "val", "attribute": None, "value": val_loss, "n": None}]
    if config.db_path is not None:
        # opened here, read-only, and closed with the eval: a handle never travels in the config
        with PeopleDB(config.db_path) as db:
            for split, db_split, count in (("trained", "train", config.trained_people),
                                           ("heldout", "heldout", config.heldout_people)):
                people = sample_people(db, db_split, count, config.seed)
                if people:
                    scored, _ = score_questions(model, tokenizer, split, people, db,
                                                config.max_new_tokens, config.batch_size)
                    records += [r for r in scored if r["attribute"] is None]
    # the run may have been published (staging renamed into place) while we evaluated
    run = live_run_folder(config.run_dir)
    name = _run_name(config, run)
    records = [{"model": name, **r, "step": step} for r in records]
    append_jsonl(run / EVALS_FILE, records)
    ended = time.time()
    append_jsonl(run / CHECKPOINT_EVALS_FILE, [{
        "step": step, "checkpoint": checkpoint.name, "fingerprint": state.get("fingerprint"),
        "status": "done", "started_at": started, "ended_at": ended,
        "seconds": round(ended - started, 3), "train_step_at_start": train_step_at_start,
        "train_step_at_end": latest_logged_step(run)}])
    return records
