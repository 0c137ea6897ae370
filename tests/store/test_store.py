"""The run database: run folders written by hand, indexed (incrementally), and read back with SQL."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from lmpipe.cli import main
from lmpipe.store import index as store
from lmpipe.store.index import SCHEMA, discover_runs, export_parquet, index_runs, query

# What one index_runs call did, beside the table counts.
ACTIVITY = ("read_runs", "deleted_runs", "unchanged_runs")

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
        "params_wide": 3,          # one row per run
        "metrics": 3 + 4 + 1,      # step 1: tokens, loss, lr; step 2: + val_loss; step 4: loss
        "evals": 2,
        "summaries": 3,            # final_loss, params_count, note
        "sweep_points": 0,
        "probes": 0, "linear_probes": 0,
        "skipped_lines": 3,        # truncated metrics line, step-less line, truncated evals line
        "read_runs": 3, "deleted_runs": 0, "unchanged_runs": 0,
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
    second = index_runs(runs_root, db)
    assert {k: v for k, v in second.items() if k not in ACTIVITY} == \
        {k: v for k, v in first.items() if k not in ACTIVITY}
    assert (second["read_runs"], second["unchanged_runs"]) == (0, 3)
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
    assert counts == {**{table: 0 for table in SCHEMA}, "skipped_lines": 0,
                      **{key: 0 for key in ACTIVITY}}
    assert query(db, "SELECT * FROM runs").empty


def test_query_is_read_only_and_needs_a_database(runs_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    assert query(db, "SELECT run_id FROM runs WHERE stage = ?", ["eval"])["run_id"].tolist() == ["eval"]
    with pytest.raises(duckdb.Error):
        query(db, "DELETE FROM runs")
    with pytest.raises(FileNotFoundError, match="lmpipe index"):
        query(tmp_path / "missing.duckdb", "SELECT 1")


# --- incremental indexing ---------------------------------------------------------------------

def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run ids the store reads (lmpipe.store.read.read_run), from now on."""
    read: list[str] = []
    real = store.read_run

    def spy(run, rows, points):
        read.append(run.run_id)
        return real(run, rows, points)

    monkeypatch.setattr(store, "read_run", spy)
    return read


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unchanged_tree_reads_and_writes_nothing(runs_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    before = _digest(db)
    read = _spy_reads(monkeypatch)
    counts = index_runs(runs_root, db)
    assert read == [] and counts["read_runs"] == 0 and counts["unchanged_runs"] == 3
    assert _digest(db) == before  # rolled back, not rewritten


def test_only_changed_runs_are_read_and_vanished_ones_deleted(runs_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    others = {t: query(db, f"SELECT * FROM {t} WHERE run_id <> 'teacher' ORDER BY ALL")
              for t in ("runs", "params", "metrics", "evals", "summaries")}
    with open(runs_root / "teacher" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.5, "val_loss": 1.75}) + "\n")
    read = _spy_reads(monkeypatch)
    counts = index_runs(runs_root, db)
    assert read == ["teacher"]
    assert (counts["read_runs"], counts["unchanged_runs"], counts["metrics"]) == (1, 2, 8 + 2)
    assert counts["skipped_lines"] == 3  # the teacher's two bad lines were counted again, once
    loss = query(db, "SELECT step, value FROM metrics WHERE run_id = 'teacher' AND name = 'loss' "
                     "ORDER BY step")
    assert loss.values.tolist() == [[1, 4.0], [2, 3.0], [4, 2.0], [5, 1.5]]
    assert query(db, "SELECT count(*) AS n FROM runs WHERE run_id = 'teacher'")["n"][0] == 1
    for table, frame in others.items():  # the other runs' rows are exactly as they were
        assert query(db, f"SELECT * FROM {table} WHERE run_id <> 'teacher' ORDER BY ALL").equals(frame)

    read.clear()
    for path in (runs_root / "eval").iterdir():
        path.unlink()
    (runs_root / "eval").rmdir()
    counts = index_runs(runs_root, db)
    assert read == [] and (counts["deleted_runs"], counts["runs"], counts["evals"]) == (1, 2, 0)
    for table in ("runs", "params", "params_wide", "metrics", "evals", "summaries", "_ingested"):
        assert query(db, f"SELECT count(*) AS n FROM {table} WHERE run_id = 'eval'")["n"][0] == 0
    assert counts["skipped_lines"] == 2  # the eval run's truncated line left with it


def test_a_rewritten_summary_is_picked_up(runs_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    crashed = runs_root / "crashed"
    (crashed / "summary.json").write_text(json.dumps({"stage": "train", "status": "failed"}))
    counts = index_runs(runs_root, db)
    assert counts["read_runs"] == 1
    assert query(db, "SELECT status FROM runs WHERE run_id = 'crashed'")["status"][0] == "failed"


# --- corrupted lines --------------------------------------------------------------------------

def test_corrupted_lines_are_skipped_and_counted_exactly(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    folder = write_run(root, "bad", summary={"stage": "train", "name": "bad", "status": "failed"})
    good = [json.dumps({"step": 1, "loss": 4.0, "ok": True, "phase": "warm"}).encode(),
            b'{"step": 2.0, "loss": NaN, "lr": 1e-4}',           # integral float step; NaN kept
            b'{"step": 3, "loss": 3.0}\r',                        # CRLF line ending
            b"   ",                                               # blank: not counted
            b"",
            json.dumps({"step": 7, "loss": 1.0, "tokens": 10**30}).encode()]
    bad = [b"\x00\xff\xfe\x89PNG garbage",                       # binary garbage
           b'{"step": 4, "loss": 2.5, "note": "\xff\xfe"}',      # valid JSON, invalid UTF-8
           b"[1, 2]", b'"text"', b"42", b"null",                 # not objects
           json.dumps({"loss": 9.9}).encode(),                   # no step
           json.dumps({"step": "5", "loss": 9.9}).encode(),      # step not a number
           json.dumps({"step": True, "loss": 9.9}).encode(),     # a bool is not a step
           json.dumps({"step": 5.5, "loss": 9.9}).encode(),      # nor a fraction
           json.dumps({"step": 2**64, "loss": 9.9}).encode(),    # nor beyond BIGINT
           b"[" * 100_000,                                       # too deep for the parser
           b'{"step": 201, "lo']                                 # truncated by a kill
    lines = good[:3] + bad[:6] + good[3:] + bad[6:]
    (folder / "metrics.jsonl").write_bytes(b"\n".join(lines))   # no final newline
    (folder / "evals.jsonl").write_bytes(b"\n".join([
        json.dumps({"model": "m", "metric": "recall", "split": "trained", "value": 0.5}).encode(),
        json.dumps({"model": "m", "metric": "recall", "value": "high"}).encode(),  # not a number
        json.dumps({"metric": "recall", "value": 0.1}).encode(),                   # no model
        b"\xc3\x28 not utf-8",
        b'{"model": "m", "metric": "tool_accuracy", "val']) + b"\n")
    db = tmp_path / "runs.duckdb"
    counts = index_runs(root, db)
    assert counts["skipped_lines"] == len(bad) + 4
    assert query(db, "SELECT skipped_lines FROM runs")["skipped_lines"].tolist() == [len(bad) + 4]

    rows = query(db, "SELECT step, name, value FROM metrics ORDER BY step, name")
    assert rows[["step", "name"]].values.tolist() == [
        [1, "loss"], [2, "loss"], [2, "lr"], [3, "loss"], [7, "loss"], [7, "tokens"]]
    values = rows["value"].tolist()
    assert values[0] == 4.0 and values[1] != values[1] and values[2:5] == [1e-4, 3.0, 1.0]
    assert values[5] == pytest.approx(1e30)
    assert query(db, "SELECT model, metric, value FROM evals").values.tolist() == [["m", "recall", 0.5]]


def test_unreadable_json_files_do_not_stop_the_index(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    folder = write_run(root, "r", params={"a": 1}, summary={"stage": "train", "status": "completed"})
    (folder / "params.json").write_bytes(b'{"a": 1, "b": \xff')
    (folder / "env.json").write_text("[1, 2]")
    counts = index_runs(root, tmp_path / "runs.duckdb")
    assert (counts["runs"], counts["params"]) == (1, 0)


# --- sweeps, nested discovery, params_wide ----------------------------------------------------

def _write_sweep(root: Path) -> None:
    sweep = root / "sweeps" / "itl-3fa1"
    points = [
        {"point": "p00", "params": {"world.people": 25, "model.d_model": 32}, "status": "completed",
         "exp": "exp-a", "attempts": 1, "wall_time_s": 12.5, "error": None},
        {"point": "p01", "params": {"world.people": 50, "model.d_model": 32}, "status": "failed",
         "exp": "exp-b", "attempts": 2, "wall_time_s": 3.0, "error": "RuntimeError: boom"},
        {"point": "p02", "params": {"world.people": 100, "model.d_model": 32}, "status": "pending",
         "exp": None, "attempts": 0, "wall_time_s": None, "error": None},
    ]
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({
        "sweep": "itl-3fa1", "grid": "grids/itl.yaml", "created_at": "2026-11-23T10:00:00+00:00",
        "axes": {"world.people": [25, 50, 100], "model.d_model": [32]}, "points": points}))
    for p, people, tool in (("p00", 25, True), ("p01", 50, False)):
        point = {k: v for k, v in points[int(p[1:])].items() if k in ("point", "params", "status", "exp")}
        (sweep / p).mkdir()
        (sweep / p / "point.json").write_text(json.dumps({"sweep": "itl-3fa1", **point}))
        params = {"world": {"people": people, "tool_dialogs": tool, "name": f"w{people}"},
                  "model": {"d_model": 32, "dropout": 0.1 if tool else 0}, "tags": ["a"]}
        run = write_run(sweep / p, "teacher", params=params,
                        summary={"stage": "train", "name": "teacher", "status": "completed"},
                        metrics=[json.dumps({"step": 1, "loss": 2.0})])
        (run / "checkpoints" / "step_1").mkdir(parents=True)       # never descended into
        (run / "checkpoints" / "step_1" / "params.json").write_text("{}")
        write_run(sweep / p, "eval", params=params, summary={"stage": "eval", "status": "completed"})
    write_run(sweep / "p00" / "extra", "nested", params={"world": {"people": "many"}})


def test_sweeps_are_discovered_with_their_points(runs_root: Path, tmp_path: Path) -> None:
    _write_sweep(runs_root)
    write_run(runs_root / ".dvc", "tmp", params={"x": 1})          # hidden: skipped
    db = tmp_path / "runs.duckdb"
    counts = index_runs(runs_root, db)
    ids = ["crashed", "eval", "sweeps/itl-3fa1/p00/eval", "sweeps/itl-3fa1/p00/extra/nested",
           "sweeps/itl-3fa1/p00/teacher", "sweeps/itl-3fa1/p01/eval",
           "sweeps/itl-3fa1/p01/teacher", "teacher"]
    assert [str(p.relative_to(runs_root).as_posix()) for p in discover_runs(runs_root)] == ids
    assert counts["runs"] == len(ids) and counts["sweep_points"] == 3

    runs = query(db, "SELECT run_id, sweep, point FROM runs ORDER BY run_id")
    assert runs.fillna("-").values.tolist() == [
        ["crashed", "-", "-"], ["eval", "-", "-"],
        ["sweeps/itl-3fa1/p00/eval", "itl-3fa1", "p00"],
        ["sweeps/itl-3fa1/p00/extra/nested", "itl-3fa1", "p00"],   # the nearest point.json
        ["sweeps/itl-3fa1/p00/teacher", "itl-3fa1", "p00"],
        ["sweeps/itl-3fa1/p01/eval", "itl-3fa1", "p01"],
        ["sweeps/itl-3fa1/p01/teacher", "itl-3fa1", "p01"], ["teacher", "-", "-"]]

    points = query(db, "SELECT * FROM sweep_points ORDER BY point")
    assert points[["sweep", "point", "status", "exp", "attempts"]].fillna("-").values.tolist() == [
        ["itl-3fa1", "p00", "completed", "exp-a", 1], ["itl-3fa1", "p01", "failed", "exp-b", 2],
        ["itl-3fa1", "p02", "pending", "-", 0]]
    assert points["wall_time_s"].tolist()[:2] == [12.5, 3.0] and points["error"][1] == "RuntimeError: boom"
    assert json.loads(points["params"][0]) == {"world.people": 25, "model.d_model": 32}
    # sweep points join their runs
    joined = query(db, "SELECT r.run_id, s.attempts FROM runs r JOIN sweep_points s USING (sweep, point) "
                       "WHERE r.stage = 'train' ORDER BY 1")
    assert joined.values.tolist() == [["sweeps/itl-3fa1/p00/teacher", 1], ["sweeps/itl-3fa1/p01/teacher", 2]]


def test_without_seeds_a_point_is_its_own_group_and_the_views_say_so(runs_root: Path,
                                                                     tmp_path: Path) -> None:
    _write_sweep(runs_root)
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    runs = query(db, "SELECT run_id, point_group, seed FROM runs WHERE sweep IS NOT NULL "
                     "AND stage = 'train' ORDER BY run_id")
    assert runs["point_group"].tolist() == ["p00", "p01"] and runs["seed"].isna().all()
    points = query(db, "SELECT point, point_group, group_params, params FROM sweep_points ORDER BY point")
    assert points["point_group"].tolist() == ["p00", "p01", "p02"]
    assert points["group_params"].tolist() == points["params"].tolist()   # no seed keys to drop
    groups = query(db, "SELECT run_id, group_id, replicates FROM run_groups ORDER BY run_id")
    assert dict(zip(groups["run_id"], groups["group_id"]))["sweeps/itl-3fa1/p01/teacher"] == \
        "itl-3fa1/p01/teacher"
    assert set(groups["replicates"]) == {1}
    spread = query(db, "SELECT group_id, model, mean, min, max, n FROM eval_spread "
                       "WHERE metric = 'recall' AND attribute IS NULL")
    assert spread.values.tolist() == [["eval", "teacher", 0.8125, 0.8125, 0.8125, 1]]
    assert query(db, "SELECT count(*) AS n FROM metric_spread")["n"][0] == 8 + 2  # one per row


def test_replicates_aggregate_as_mean_min_max_in_the_views(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    sweep = root / "sweeps" / "rep-1"
    points = []
    for seed, accuracy in ((0, 0.5), (1, 0.75), (2, 0.625)):
        record = {"point": f"p00s{seed}", "group": "p00", "seed": seed, "status": "completed",
                  "params": {"world.people": 25, "teacher.train.seed": seed}}
        points.append(record)
        (sweep / record["point"]).mkdir(parents=True)
        (sweep / record["point"] / "point.json").write_text(json.dumps({"sweep": "rep-1", **record}))
        write_run(sweep / record["point"], "eval", summary={"stage": "eval", "status": "completed"},
                  evals=[json.dumps({"model": "m", "metric": "tool_accuracy", "split": "trained",
                                     "attribute": None, "value": accuracy, "n": 8})],
                  metrics=[json.dumps({"step": 1, "loss": 1.0 + seed})])
    (sweep / "sweep.json").write_text(json.dumps({
        "sweep": "rep-1", "axes": {"cross": {}, "zip": [], "seeds": [0, 1, 2],
                                   "seed_keys": ["teacher.train.seed"]}, "points": points}))
    db = tmp_path / "runs.duckdb"
    index_runs(root, db)
    row = query(db, "SELECT group_id, point_group, mean, min, max, n, seeds, runs FROM eval_spread"
                ).iloc[0]
    assert (row["group_id"], row["point_group"], row["n"]) == ("rep-1/p00/eval", "p00", 3)
    assert (row["mean"], row["min"], row["max"]) == (pytest.approx(0.625), 0.5, 0.75)
    assert list(row["seeds"]) == [0, 1, 2] and len(row["runs"]) == 3
    loss = query(db, "SELECT mean, min, max, n FROM metric_spread WHERE name = 'loss'").iloc[0]
    assert loss.tolist() == [2.0, 1.0, 3.0, 3]
    group = query(db, "SELECT params, points, n FROM sweep_groups").iloc[0]
    assert json.loads(group["params"]) == {"world.people": 25} and group["n"] == 3
    assert list(group["points"]) == ["p00s0", "p00s1", "p00s2"]


def test_params_wide_has_one_typed_column_per_key(runs_root: Path, tmp_path: Path) -> None:
    _write_sweep(runs_root)
    db = tmp_path / "runs.duckdb"
    counts = index_runs(runs_root, db)
    assert counts["params_wide"] == counts["runs"]
    types = query(db, "SELECT column_name, data_type FROM information_schema.columns "
                      "WHERE table_name = 'params_wide'")
    types = dict(zip(types["column_name"], types["data_type"]))
    assert types["run_id"] == "VARCHAR"
    assert types["model.d_model"] == "BIGINT" and types["train.lr"] == "DOUBLE"
    assert types["model.dropout"] == "DOUBLE"        # 0.1 and 0: every value a number
    assert types["world.tool_dialogs"] == "BOOLEAN"
    assert types["world.people"] == "VARCHAR"        # 25, 50 and "many"
    assert types["world.name"] == "VARCHAR" and types["tags"] == "VARCHAR"

    wide = query(db, 'SELECT run_id, "model.d_model" + 1 AS d, "world.tool_dialogs" AS tool, '
                     '"world.name" AS name, "world.people" AS people, tags, "train.optimizer" AS opt '
                     "FROM params_wide ORDER BY run_id").set_index("run_id")
    row = wide.loc["sweeps/itl-3fa1/p00/teacher"]
    assert (row["d"], bool(row["tool"]), row["name"], row["people"], row["tags"]) == \
        (33, True, "w25", "25", '["a"]')
    assert wide.loc["sweeps/itl-3fa1/p00/extra/nested", "people"] == "many"
    assert wide.loc["teacher", "opt"] == "adamw"  # strings unquoted
    assert wide.loc["crashed"].drop("opt").isna().all()   # crashed has only train.lr
    assert query(db, "SELECT value_num FROM params WHERE run_id = 'teacher' AND key = 'train.lr'"
                 )["value_num"][0] == pytest.approx(3e-4)


def test_a_changed_point_json_rereads_its_runs_and_sweep_json_is_always_read(
        runs_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_sweep(runs_root)
    db = tmp_path / "runs.duckdb"
    index_runs(runs_root, db)
    point = runs_root / "sweeps/itl-3fa1/p01/point.json"
    point.write_text(json.dumps({"sweep": "itl-3fa1", "point": "p01-retry"}))
    sweep_file = runs_root / "sweeps/itl-3fa1/sweep.json"
    sweep = json.loads(sweep_file.read_text())
    sweep["points"][2]["status"] = "running"
    sweep_file.write_text(json.dumps(sweep))
    read = _spy_reads(monkeypatch)
    index_runs(runs_root, db)
    assert sorted(read) == ["sweeps/itl-3fa1/p01/eval", "sweeps/itl-3fa1/p01/teacher"]
    assert query(db, "SELECT DISTINCT point FROM runs WHERE run_id LIKE '%/p01/%'")["point"].tolist() == \
        ["p01-retry"]
    assert query(db, "SELECT status FROM sweep_points WHERE point = 'p02'")["status"][0] == "running"


# --- schema migration, export, command line ---------------------------------------------------

OLD_SCHEMA = {  # the tables as lmpipe wrote them before the incremental store
    "runs": "run_id VARCHAR PRIMARY KEY, stage VARCHAR, name VARCHAR, status VARCHAR, "
            "started_at TIMESTAMP, ended_at TIMESTAMP, wall_time_s DOUBLE, peak_rss_mb DOUBLE, "
            "git_commit VARCHAR, git_dirty BOOLEAN, host VARCHAR, device VARCHAR, "
            "lmpipe_version VARCHAR, torch VARCHAR, transformers VARCHAR, path VARCHAR",
    "params": "run_id VARCHAR, key VARCHAR, value VARCHAR",
    "metrics": "run_id VARCHAR, step BIGINT, name VARCHAR, value DOUBLE",
    "evals": "run_id VARCHAR, model VARCHAR, metric VARCHAR, split VARCHAR, attribute VARCHAR, "
             "value DOUBLE, n BIGINT, step BIGINT",
    "summaries": "run_id VARCHAR, key VARCHAR, value VARCHAR, value_num DOUBLE",
}


def test_a_database_of_the_old_schema_is_rebuilt(runs_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    with duckdb.connect(str(db)) as con:
        for table, ddl in OLD_SCHEMA.items():
            con.execute(f"CREATE TABLE {table} ({ddl})")
        con.execute("INSERT INTO runs (run_id, status) VALUES ('ghost', 'completed')")
        con.execute("INSERT INTO metrics VALUES ('ghost', 1, 'loss', 1.0)")
    counts = index_runs(runs_root, db)
    assert (counts["runs"], counts["metrics"], counts["read_runs"]) == (3, 8, 3)
    assert "ghost" not in query(db, "SELECT run_id FROM runs")["run_id"].tolist()
    columns = query(db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'")
    assert {"sweep", "point", "point_group", "seed", "skipped_lines"} <= set(columns["column_name"])
    assert index_runs(runs_root, db)["read_runs"] == 0  # and from then on, incremental
    views = query(db, "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1")
    assert views["view_name"].tolist() == ["eval_spread", "metric_spread", "run_groups",
                                           "sweep_groups"]


def test_export_writes_one_parquet_file_per_table(runs_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    _write_sweep(runs_root)
    db = tmp_path / "runs.duckdb"
    counts = index_runs(runs_root, db)
    written = export_parquet(db, tmp_path / "parquet")
    assert set(written) == set(SCHEMA)
    with duckdb.connect() as con:
        for table, (path, rows) in written.items():
            assert path == tmp_path / "parquet" / f"{table}.parquet"
            assert rows == counts[table]
            assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0] == rows
        wide = con.execute("SELECT \"model.d_model\" FROM read_parquet(?) WHERE run_id = 'teacher'",
                           [str(written["params_wide"][0])]).fetchall()
        assert wide == [(None,)]
    assert sorted(os.listdir(tmp_path / "parquet")) == sorted(f"{t}.parquet" for t in SCHEMA)

    main(["export", "--db", str(db), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'out' / 'metrics.parquet'}: {counts['metrics']} rows (metrics)" in printed
    assert (tmp_path / "out" / "sweep_points.parquet").is_file()


def test_cli_index_and_query_print_tables(runs_root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "store" / "lmpipe.duckdb"
    main(["index", "--runs", str(runs_root), "--db", str(db)])
    out, err = capsys.readouterr()
    assert "runs=3" in out and "read_runs=3" in out and "3 unreadable log lines" in err
    main(["query", "SELECT run_id, status FROM runs ORDER BY run_id", "--db", str(db)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run_id", "status"] and lines[1].split() == ["crashed", "incomplete"]
    main(["query", "SELECT * FROM range(10)", "--db", str(db), "--max-rows", "4"])
    assert "(10 rows, 4 shown" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="read-only"):
        main(["query", "DELETE FROM runs", "--db", str(db)])
