"""Asynchronous checkpoint evals: a JSON-clean config, the checkpoint scan, and the real thing —
a tiny model trained in its own process while a Prefect flow evaluates each checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from lmpipe.core.jsonl import append_jsonl
from lmpipe.eval.checkpoints import (
    CheckpointEvalConfig,
    CheckpointVanished,
    eval_log,
    evaluate_checkpoint,
    evaluated_steps,
    latest_logged_step,
    pending_checkpoints,
)
from lmpipe.report.render import render_report
from lmpipe.store.index import index_runs, query
from lmpipe.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

STEPS, EVERY = 800, 100
TEACHER = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 256},
           "train": {"steps": STEPS, "batch_size": 16, "lr": 0.01, "warmup_steps": 5,
                     "log_every": 5, "eval_every": STEPS, "checkpoint_every": EVERY,
                     # keep them all: the test checks every step was evaluated
                     "keep_checkpoints": STEPS // EVERY}}


def config_for(run: Path, tmp_path: Path) -> CheckpointEvalConfig:
    return CheckpointEvalConfig(run_dir=str(run), db_path=str(tmp_path / "people.duckdb"),
                                tokens_dir=str(tmp_path / "tokens"), trained_people=4,
                                heldout_people=4, max_new_tokens=32, batch_size=48)


def test_config_serializes_cleanly_and_refuses_live_objects(tmp_path):
    config = config_for(tmp_path / "runs" / "teacher", tmp_path)
    text = config.model_dump_json()
    assert CheckpointEvalConfig.model_validate_json(text) == config
    values = json.loads(text).values()
    assert all(v is None or isinstance(v, (str, int, float)) for v in values)
    # what broke the previous codebase: a device and a database handle inside the config
    with pytest.raises(ValidationError, match="run_dir"):
        CheckpointEvalConfig(run_dir=torch.device("cpu"), tokens_dir="t")
    with pytest.raises(ValidationError, match="db_handle"):
        CheckpointEvalConfig(run_dir="r", tokens_dir="t", db_handle=object())


def test_pending_checkpoints_lists_only_finished_unevaluated_ones(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (100, 200, 300):
        (folder / f"step_{step:08d}").mkdir(parents=True)
        (folder / f"step_{step:08d}" / "trainer_state.json").write_text("{}")
    (folder / ".tmp-step_00000400-123").mkdir()           # being written
    (folder / "step_00000500").mkdir()                     # no trainer_state.json: not complete
    names = [p.name for p in pending_checkpoints(tmp_path, {200})]
    assert names == ["step_00000100", "step_00000300"]
    assert pending_checkpoints(tmp_path / "nowhere", set()) == []

    append_jsonl(tmp_path / "checkpoint_evals.jsonl", [{"step": 100, "status": "done"}])
    with (tmp_path / "checkpoint_evals.jsonl").open("a") as f:
        f.write('{"step": 3')                              # torn line: skipped
    assert evaluated_steps(tmp_path) == {100}
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss": 1}\n{"step": 10, "lo')
    assert latest_logged_step(tmp_path) == 5


def test_a_vanished_checkpoint_is_reported_as_such(tmp_path):
    config = config_for(tmp_path, tmp_path)
    with pytest.raises(CheckpointVanished, match="step_00000100"):
        evaluate_checkpoint(config, tmp_path / "checkpoints" / "step_00000100")
    assert not (tmp_path / "evals.jsonl").exists()


@pytest.fixture()
def workspace(tmp_path, tiny_world, tiny_tokens, tokenizer) -> Path:
    """A DVC-style workspace: params.yaml, data/world, data/tokens (with its tokenizer/)."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "world").symlink_to(tiny_world)
    shutil.copytree(tiny_tokens, work / "data" / "tokens")
    tokenizer.save_pretrained(work / "data" / "tokens" / "tokenizer")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"] = TEACHER
    params["distill"]["layers"] = "last"  # a 1-block teacher: `all` would pair missing blocks
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


@pytest.mark.slow
def test_training_keeps_stepping_while_checkpoints_are_evaluated(workspace, tmp_path):
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "async_eval.py"), "--workdir", str(workspace),
         "--name", "teacher", "--poll", "0.5", "--trained-people", "4", "--heldout-people", "4",
         "--max-new-tokens", "32", "--batch-size", "48"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    run = workspace / "runs" / "teacher"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    steps = list(range(EVERY, STEPS + 1, EVERY))
    assert [int(p.name[5:]) for p in list_checkpoints(run / "checkpoints")] == steps

    # training was never waiting: while an eval ran, the trainer logged further steps
    log = eval_log(run)
    assert sorted(e["step"] for e in log) == steps
    advanced = [e for e in log if e["train_step_at_end"] is not None
                and e["train_step_at_end"] > (e["train_step_at_start"] or 0)]
    assert advanced, f"no eval overlapped training: {log}"

    records = [json.loads(line) for line in (run / "evals.jsonl").open()]
    for step in steps:
        mine = {(r["metric"], r["split"]): r for r in records if r["step"] == step}
        assert {("val_loss", "val"), ("tool_accuracy", "trained"),
                ("tool_accuracy", "heldout")} <= set(mine), step
        assert mine[("tool_accuracy", "heldout")]["n"] == 4 * 6  # 4 people x 6 attributes
        assert all(r["model"] == "teacher" and r["attribute"] is None for r in mine.values())
    val = [next(r["value"] for r in records if r["step"] == s and r["metric"] == "val_loss")
           for s in steps]
    assert val[-1] < val[0]  # the checkpoints really are the training's successive weights

    db = tmp_path / "runs.duckdb"
    index_runs(workspace / "runs", db)
    series = query(db, "SELECT DISTINCT step FROM evals WHERE metric = 'tool_accuracy' "
                       "AND run_id = 'teacher' ORDER BY step")
    assert series["step"].tolist() == steps
    render_report(db, tmp_path / "report")
    curves = (tmp_path / "report" / "curves.html").read_text(encoding="utf-8")
    assert "With vs without the tool over training" in curves
    assert 'vegaEmbed("#step_accuracy"' in curves
    # a training run's series is not an eval-stage run
    assert "<p>No eval run yet.</p>" in (tmp_path / "report" / "distillation.html").read_text(
        encoding="utf-8")
