"""A training run watched from outside while it trains (flows/async_eval.py): which workspace and
run folder, the config its checkpoint evals get, and whether it is still going (its process, its
summary, whether it has opened its run folder yet)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from lmpipe.core.paths import PARAMS, TOKENS, WORLD, run_dir
from lmpipe.core.run_folder import PARAMS_FILE, SUMMARY_FILE
from lmpipe.eval.checkpoints import CheckpointEvalConfig
from lmpipe.core.section import ConfigError
from lmpipe.params.config import load_params


def watched_training_run(name: str, workdir: str | Path, overrides: Sequence[str] = (),
                         **eval_options: Any) -> tuple[Path, Path, CheckpointEvalConfig]:
    """(workspace, run folder, checkpoint-eval config) for training section `name` in the DVC
    workspace `workdir` (or its params.yaml) with `overrides`; `eval_options` are
    CheckpointEvalConfig's own (people, tokens, batch size, threads). Refuses, before anything
    starts, a name other than teacher/student and an imported model (it has no checkpoints)."""
    workdir = Path(workdir).resolve()
    if workdir.is_file():
        # a params file: the stage reads ./params.yaml, so it must be the workspace's own
        if workdir.name != PARAMS.name:
            raise ConfigError(f"{workdir}: stages.train reads {PARAMS.name} in its working "
                              "directory; pass the workspace folder or its params.yaml")
        workdir = workdir.parent
    params = load_params(workdir / PARAMS, list(overrides))
    if name not in ("teacher", "student"):
        raise ConfigError(f"a watched training run: name must be teacher or student, got {name!r}")
    section = getattr(params, name)
    if section.pretrained:
        raise ConfigError(f"{name}.pretrained = {section.pretrained}: an imported model is not "
                          "trained, so it has no checkpoints to evaluate")
    if not section.train.checkpoint_every:
        print(f"note: {name}.train.checkpoint_every is 0: only the final checkpoint is evaluated")
    # a run that cannot resume clears its own staging folder (checkpoints and eval series with
    # it) before it writes params.json; the watcher waits for that (`opened_since`)
    run = workdir / run_dir(name)
    config = CheckpointEvalConfig(
        run_dir=str(run), tokens_dir=str(workdir / TOKENS), run_name=name,
        db_path=str(workdir / WORLD / "people.duckdb") if params.data.source == "people" else None,
        seed=params.eval.seed, **eval_options)
    return workdir, run, config


def process_alive(pid: int) -> bool:
    """Whether process `pid` is still running (a zombie waiting to be reaped counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def training_finished(run: Path, stop_when_summary: bool, not_before: float | None,
                      train_pid: int | None) -> bool:
    """Whether the training run writing `run` is over: process `train_pid` has exited, or (with
    `stop_when_summary`) its summary exists, written at or after `not_before` (a unix time)."""
    if train_pid is not None and not process_alive(train_pid):
        return True
    if stop_when_summary:
        summary = run / SUMMARY_FILE
        try:
            # a summary from an earlier run in the same folder does not count
            return not_before is None or summary.stat().st_mtime >= not_before
        except FileNotFoundError:
            return False
    return False


def opened_since(run: Path, not_before: float | None) -> bool:
    """Whether the training process started at `not_before` has opened its run folder yet: until
    then the folder may hold checkpoints of an earlier run that the trainer is about to clear."""
    if not_before is None:
        return True
    try:
        return (run / PARAMS_FILE).stat().st_mtime >= not_before
    except FileNotFoundError:
        return False

