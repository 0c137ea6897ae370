"""The HTML reports: built from hand-written run folders, checked for content and offline use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmpipe.report.curves import CURVES_SQL, MAX_POINTS_PER_CURVE
from lmpipe.report.render import render_report
from lmpipe.store.index import index_runs, query

MODELS = ["teacher", "student", "distilled", "quantized"]
PAGES = ["index", "curves", "scaling", "distillation"]


def pages(out_dir: Path) -> dict[str, str]:
    return {name: (out_dir / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}


def assert_self_contained(page: str) -> None:
    assert "window.vegaEmbed=" in page                       # the bundle is inlined ...
    assert re.search(r"<script[^>]*\bsrc=", page) is None    # ... and nothing is fetched
    assert "https://cdn" not in page


def write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def summary(stage: str, name: str, hour: int) -> dict:
    return {"stage": stage, "name": name, "status": "completed",
            "started_at": f"2026-11-23T{hour:02d}:00:00+00:00",
            "ended_at": f"2026-11-23T{hour:02d}:20:00+00:00", "wall_time_s": 1234.5,
            "peak_rss_mb": 700.0}


def eval_lines(values: dict[tuple[str, str, str], float]) -> str:
    rows = [{"model": m, "metric": metric, "split": split, "attribute": None, "value": v, "n": 64}
            for (m, metric, split), v in values.items()]
    rows.append({"model": "teacher", "metric": "recall", "split": "trained",
                 "attribute": "birth_city", "value": 0.3333, "n": 16})
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for hour, name in enumerate(["teacher", "student", "distill"], start=8):
        write_json(root / name / "summary.json", summary("train", name, hour))
        lines = [json.dumps({"step": s, "loss": 5.0 - s / 100, **({"val_loss": 4.5} if s % 50 == 0 else {})})
                 for s in range(1, 201)]
        (root / name / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 201, "lo')
    # An older eval run whose numbers must not be shown, and the latest one.
    write_json(root / "eval_old" / "summary.json", summary("eval", "eval", 11))
    (root / "eval_old" / "evals.jsonl").write_text(
        eval_lines({(m, "recall", "trained"): 0.1111 for m in MODELS}))
    write_json(root / "eval" / "summary.json", summary("eval", "eval", 12))
    values = {}
    for i, model in enumerate(MODELS):
        values[(model, "recall", "trained")] = 0.8125 - i / 10
        values[(model, "tool_accuracy", "trained")] = 0.9688 - i / 100
        values[(model, "tool_accuracy", "heldout")] = 0.9375 - i / 100
        values[(model, "val_ppl", "val")] = 12.345 + i
    (root / "eval" / "evals.jsonl").write_text(eval_lines(values))
    db_path = tmp_path / "runs.duckdb"
    index_runs(root, db_path)
    return db_path


def test_report_is_self_contained_and_shows_the_numbers(db: Path, tmp_path: Path) -> None:
    out = render_report(db, tmp_path / "report")
    assert out == tmp_path / "report" / "index.html"
    html = pages(tmp_path / "report")

    index = html["index"]
    assert "<title>lmpipe report</title>" in index
    for name in PAGES:                                       # every page links every page
        assert all(f'href="{other}.html"' in html[name] for other in PAGES)
    assert "vegaEmbed" not in index                          # tables only: no bundle needed
    for run_id in ["teacher", "student", "distill", "eval_old", "eval"]:
        assert f"<td>{run_id}</td>" in index                 # runs table
    assert "20m 34.5s" in index                              # wall time, readable
    assert "No sweep yet" in index

    curves = html["curves"]
    assert_self_contained(curves)
    assert curves.count('vegaEmbed("#') == 1                  # no recall/tool accuracy logged
    assert 'vegaEmbed("#curves"' in curves and "No run has logged <code>recall</code>" in curves
    assert curves.count('<p class="howto">') == 1

    dist = html["distillation"]
    assert_self_contained(dist)
    assert dist.count('vegaEmbed("#') == 1                    # the eval comparison
    assert dist.count('<p class="howto">') == 1
    for model in MODELS:
        assert f"<th>{model}</th>" in dist                   # a column per model
    assert "<td>0.8125</td>" in dist                          # recall, trained (teacher)
    assert "<td>0.9375</td>" in dist                          # tool accuracy, held-out (teacher)
    assert "<td>13.35</td>" in dist                           # val_ppl of the student
    assert "0.1111" not in dist                               # the older eval run is not shown
    assert "0.3333" not in dist                               # per-attribute rows are not shown
    assert "<td>tool_accuracy / heldout</td>" in dist         # a row per measure
    assert "No distillation run has logged <code>val_loss</code> yet" in dist

    scaling = html["scaling"]                                 # no parameters or world reported
    assert "vegaEmbed" not in scaling
    assert "No eval run has reported <code>parameters</code>" in scaling


def test_curves_are_thinned_but_keep_both_ends(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_json(root / "long" / "summary.json", summary("train", "long", 8))
    steps = 5 * MAX_POINTS_PER_CURVE + 7
    (root / "long" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 + 1 / s}) + "\n" for s in range(1, steps + 1)))
    index_runs(root, tmp_path / "runs.duckdb")
    curve = query(tmp_path / "runs.duckdb", CURVES_SQL)
    assert set(curve["metric"]) == {"loss"}
    assert len(curve) <= MAX_POINTS_PER_CURVE + 1
    assert curve["step"].min() == 1 and curve["step"].max() == steps


def test_report_without_evals_still_shows_curves(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_json(root / "teacher" / "summary.json", summary("train", "teacher", 8))
    (root / "teacher" / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    index_runs(root, tmp_path / "runs.duckdb")
    render_report(tmp_path / "runs.duckdb", tmp_path / "report")
    html = pages(tmp_path / "report")
    assert html["curves"].count('vegaEmbed("#') == 1
    assert "<p>No eval run yet.</p>" in html["distillation"]
    assert "vegaEmbed" not in html["distillation"] + html["scaling"]
    assert "(1 chart)" in html["index"] and html["index"].count("(no data yet)") == 4  # + probes, sweeps


@pytest.mark.parametrize("indexed", [True, False])
def test_empty_database_says_no_runs(tmp_path: Path, indexed: bool) -> None:
    db_path = tmp_path / "runs.duckdb"
    if indexed:
        index_runs(tmp_path / "runs", db_path)   # tables exist but are empty
    render_report(db_path, tmp_path / "report")
    html = pages(tmp_path / "report")              # every page is written, and says so plainly
    assert "<title>lmpipe report</title>" in html["index"]
    for name in PAGES:
        assert "No runs yet" in html[name] and "vegaEmbed" not in html[name]
        assert all(f'href="{other}.html"' in html[name] for other in PAGES)


def test_distillation_section_compares_students_at_equal_steps(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for hour, (stage, name, val) in enumerate([("train", "teacher", 0.01), ("train", "student", 0.5),
                                               ("distill", "distilled", 0.25)], start=8):
        folder = "distill" if stage == "distill" else name
        write_json(root / folder / "summary.json", summary(stage, name, hour))
        lines = [{"step": s, "loss": 1.0, "val_loss": val * 100 / s, "loss_ce": 0.7,
                  "loss_attention_kl": 0.2} if stage == "distill" else
                 {"step": s, "loss": 1.0, "val_loss": val * 100 / s} for s in (100, 200)]
        (root / folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    index_runs(root, tmp_path / "db.duckdb")
    render_report(tmp_path / "db.duckdb", tmp_path / "out")
    page = (tmp_path / "out" / "distillation.html").read_text()
    section = page[page.index("<h2>Distillation</h2>"):]
    assert "validation loss: scratch vs distilled" in section and "loss_attention_kl" in section
    # the equal-steps table: scratch student 0.25 vs distilled 0.125 at step 200; no teacher
    table = section[section.index("<table"):]
    assert "0.25000" in table and "0.12500" in table and "0.00500" not in table
