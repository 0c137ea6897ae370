"""The run database: run folders written by hand, indexed, and read back with SQL."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from lmpipe.store import SCHEMA, index_runs, query

ENV = {"lmpipe_version": "0.1.0", "git_commit": "abc123", "git_dirty": True, "python": "3.11.9",
       "torch": "2.13.0", "transformers": "5.23.0", "platform": "Linux", "host": "box",
       "device": "cpu", "torch_threads": 2, "cpu_count": 2,
       "started_at": "2026-11-23T12:00:00+00:00", "ended_at": "2026-11-23T12:10:00+00:00"}


def write_run(root: Path, run_id: str, *, params: dict | None = None, summary: dict | None = None,
              metrics: list[str] | None = None, evals: list[str] | None = None) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    if params is not None:
        (folder / "params.json").write_text(json.dumps(params))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "env.json").write_text(json.dumps(ENV))
    if metrics is not None:
        (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in metrics))
    if evals is not None:
        (folder / "evals.jsonl").write_text("".join(line + "\n" for line in evals))
    return folder


@pytest.fixture()
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_run(
        root, "teacher",
        params={"train": {"lr": 3e-4, "optimizer": "adamw", "schedule": {"warmup": 10}},
                "model": {"n_layer": 2}, "seeds": [1, 2]},
        summary={"stage": "train", "name": "teacher", "status": "completed",
                 "started_at": "2026-11-23T14:00:00+02:00", "ended_at": "2026-11-23T12:30:00+00:00",
                 "wall_time_s": 1800.5, "peak_rss_mb": 640.0, "final_loss": 1.25,
                 "params_count": 1000, "note": "ok"},
        metrics=[
            json.dumps({"step": 1, "tokens": 512, "loss": 4.0, "lr": 1e-4}),
            json.dumps({"step": 2, "tokens": 1024, "loss": 3.0, "lr": 2e-4, "val_loss": 3.5}),
            '{"step": 3, "tokens": 1536, "lo',          # truncated by a crash
            json.dumps({"loss": 9.9}),                   # no step
            "",                                          # blank: ignored, not counted
            json.dumps({"step": 4, "loss": 2.0, "phase": "warm"}),  # strings are not metrics
        ],
    )
    write_run(
        root, "eval",
        params={"eval": {"models": ["teacher", "student"]}},
        summary={"stage": "eval", "name": "eval", "status": "completed",
                 "started_at": "2026-11-23T13:00:00+00:00", "ended_at": "2026-11-23T13:05:00+00:00",
                 "wall_time_s": 300.0, "peak_rss_mb": 500.0},
        evals=[
            json.dumps({"model": "teacher", "metric": "recall", "split": "trained",
                        "attribute": None, "value": 0.8125, "n": 64}),
            json.dumps({"model": "student", "metric": "recall", "split": "trained",
                        "attribute": "birth_city", "value": 0.5, "n": None}),
            '{"model": "student", "metric": "rec',       # truncated
        ],
    )
    write_run(root, "crashed", params={"train": {"lr": 1e-3}})  # params only, no summary
    (root / "scratch").mkdir()                             # not a run: no summary/params
    (root / "scratch" / "notes.txt").write_text("x")
    (root / "README").write_text("not a folder")
    return root


def test_index_counts_every_table(runs_root: Path, tmp_path: Path) -> None:
    counts = index_runs(runs_root, tmp_path / "db" / "runs.duckdb")
    assert counts == {
        "runs": 3,
        "params": 5 + 1 + 1,       # teacher: 5 leaves; eval: 1; crashed: 1
        "metrics": 3 + 4 + 1,      # step 1: tokens, loss, lr; step 2: + val_loss; step 4: loss
        "evals": 2,
        "summaries": 3,            # final_loss, params_count, note
        "skipped_lines": 3,        # truncated metrics line, step-less line, truncated evals line
    }


def test_tables_hold_the_right_values(runs_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)

    params = query(db, "SELECT key, value FROM params WHERE run_id = 'teacher'")
    flat = dict(zip(params["key"], params["value"]))
    assert json.loads(flat["train.lr"]) == pytest.approx(3e-4)
    assert flat["train.optimizer"] == '"adamw"'
    assert flat["train.schedule.warmup"] == "10"
    assert json.loads(flat["seeds"]) == [1, 2]

    runs = query(db, "SELECT * FROM runs ORDER BY run_id").set_index("run_id")
    teacher = runs.loc["teacher"]
    assert (teacher["stage"], teacher["status"], teacher["git_commit"]) == ("train", "completed", "abc123")
    assert bool(teacher["git_dirty"]) is True
    assert teacher["started_at"] == datetime(2026, 11, 23, 12, 0)  # +02:00 converted to UTC
    assert teacher["wall_time_s"] == pytest.approx(1800.5)
    assert teacher["path"] == str((runs_root / "teacher").resolve())
    assert runs.loc["crashed", "status"] == "incomplete"

    loss = query(db, "SELECT step, value FROM metrics WHERE run_id = 'teacher' AND name = 'loss' "
                     "ORDER BY step")
    assert loss["step"].tolist() == [1, 2, 4]
    assert loss["value"].tolist() == [4.0, 3.0, 2.0]
    assert query(db, "SELECT count(*) AS c FROM metrics WHERE name IN ('step', 'phase')")["c"][0] == 0

    evals = query(db, "SELECT * FROM evals WHERE attribute IS NULL")
    assert evals[["model", "metric", "split"]].values.tolist() == [["teacher", "recall", "trained"]]
    assert evals["value"][0] == pytest.approx(0.8125) and evals["n"][0] == 64
    assert query(db, "SELECT n FROM evals WHERE attribute = 'birth_city'")["n"].isna().all()

    summaries = query(db, "SELECT key, value_num FROM summaries WHERE run_id = 'teacher'")
    assert dict(zip(summaries["key"], summaries["value_num"]))["final_loss"] == pytest.approx(1.25)

    types = query(db, "SELECT column_name, data_type FROM information_schema.columns "
                      "WHERE table_name = 'metrics'")
    assert dict(zip(types["column_name"], types["data_type"])) == {
        "run_id": "VARCHAR", "step": "BIGINT", "name": "VARCHAR", "value": "DOUBLE"}


def test_reindexing_is_idempotent_and_follows_the_folders(runs_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    first = index_runs(runs_root, db)
    snapshot = {t: query(db, f"SELECT * FROM {t} ORDER BY ALL") for t in SCHEMA}
    assert index_runs(runs_root, db) == first
    for table, frame in snapshot.items():
        assert query(db, f"SELECT * FROM {table} ORDER BY ALL").equals(frame), table

    for path in (runs_root / "crashed").iterdir():
        path.unlink()
    (runs_root / "crashed").rmdir()
    again = index_runs(runs_root, db)
    assert again["runs"] == 2 and again["params"] == first["params"] - 1


def test_missing_root_gives_empty_tables(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    counts = index_runs(tmp_path / "nowhere", db)
    assert counts == {**{table: 0 for table in SCHEMA}, "skipped_lines": 0}
    assert query(db, "SELECT * FROM runs").empty


def test_query_is_read_only_and_needs_a_database(runs_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    assert query(db, "SELECT run_id FROM runs WHERE stage = ?", ["eval"])["run_id"].tolist() == ["eval"]
    with pytest.raises(duckdb.Error):
        query(db, "DELETE FROM runs")
    with pytest.raises(FileNotFoundError, match="lmpipe index"):
        query(tmp_path / "missing.duckdb", "SELECT 1")
