"""The reports over a sweep: a run database built by hand with the store's schema (runs.sweep and
.point, sweep_points, evals.step), and the same pages on an older store without those columns."""

from __future__ import annotations

import html as htmllib
import importlib.util
import itertools
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from lmpipe.report.curves import MAX_POINTS_PER_CURVE, POINT_BUDGET
from lmpipe.report.render import render_report

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["index", "curves", "scaling", "distillation"]
TRAIN_METRICS = ["loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "rss_mb", "mfu"]

SCHEMA = {
    "runs": "run_id VARCHAR, stage VARCHAR, name VARCHAR, sweep VARCHAR, point VARCHAR, "
            "status VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, wall_time_s DOUBLE, "
            "peak_rss_mb DOUBLE, git_commit VARCHAR, git_dirty BOOLEAN, host VARCHAR, "
            "device VARCHAR, lmpipe_version VARCHAR, torch VARCHAR, transformers VARCHAR, "
            "path VARCHAR, skipped_lines BIGINT",
    "params": "run_id VARCHAR, key VARCHAR, value VARCHAR, value_num DOUBLE",
    "metrics": "run_id VARCHAR, step BIGINT, name VARCHAR, value DOUBLE",
    "evals": "run_id VARCHAR, model VARCHAR, metric VARCHAR, split VARCHAR, attribute VARCHAR, "
             "value DOUBLE, n BIGINT, step BIGINT",
    "sweep_points": "sweep VARCHAR, point VARCHAR, status VARCHAR, exp VARCHAR, attempts BIGINT, "
                    "wall_time_s DOUBLE, error VARCHAR, params VARCHAR",
}
OLD_SCHEMA = {  # before sweeps and checkpoint evals
    "runs": "run_id VARCHAR, stage VARCHAR, name VARCHAR, status VARCHAR, started_at TIMESTAMP, "
            "ended_at TIMESTAMP, wall_time_s DOUBLE, peak_rss_mb DOUBLE, path VARCHAR",
    "params": "run_id VARCHAR, key VARCHAR, value VARCHAR",
    "metrics": "run_id VARCHAR, step BIGINT, name VARCHAR, value DOUBLE",
    "evals": "run_id VARCHAR, model VARCHAR, metric VARCHAR, split VARCHAR, attribute VARCHAR, "
             "value DOUBLE, n BIGINT",
}


def n_params(d_model: int) -> int:
    return 265 * d_model + 2 * (16 * d_model * d_model + 2 * d_model) + d_model


def recall_of(d_model: int, people: int) -> float:
    """Without the tool: full until the facts need more than 2 bits per parameter."""
    return min(1.0, 2 * n_params(d_model) / (people * 6 * 8 * 40))


def make_store(db_path: Path, *, n_points: int = 18, steps: int = 40,
               old_schema: bool = False, pipeline: bool = True) -> dict[str, Any]:
    """A database as the store writes it: a sweep over d_model × people × mode (last point failed,
    one pending), each point a training run and an eval run; plus, with `pipeline`, the default
    experiment's teacher/student/distill runs and their eval run. Metrics are made in SQL so a
    million rows take a second."""
    schema = OLD_SCHEMA if old_schema else SCHEMA
    con = duckdb.connect(str(db_path))
    for table, ddl in schema.items():
        con.execute(f"CREATE TABLE {table} ({ddl})")
    runs, params, evals, points = [], [], [], []
    start = pd.Timestamp("2026-11-23 08:00")
    lattice = list(itertools.product([32, 64, 128], [25, 100, 400], ["tool", "no-tool"]))
    combos = [(i // len(lattice), *lattice[i % len(lattice)]) for i in range(n_points + 1)]
    train_runs = []
    for i, (seed, d_model, people, mode) in enumerate(combos):
        point = f"p{i:04d}"
        failed, pending = i == n_points - 1, i == n_points
        overrides = {"world.people": people, "teacher.model.d_model": d_model, "mode": mode,
                     "teacher.train.seed": seed}
        points.append(("s1", point, "pending" if pending else "failed" if failed else "completed",
                       None if pending else f"s1-{point}", 0 if pending else 1,
                       None if pending else 100.0 + i,
                       "stage train failed: RuntimeError: loss is NaN" if failed else None,
                       json.dumps(overrides)))
        if pending:
            continue
        world = {"world.people": people, "world.tool_dialogs": mode == "tool",
                 "world.qa_dialogs": mode != "tool", "teacher.model.d_model": d_model,
                 "teacher.train.seed": seed, "train.lr": 0.003}
        for stage in (["train"] if failed else ["train", "eval"]):
            run_id = f"sweeps/s1/{point}/{'model' if stage == 'train' else 'eval'}"
            runs.append({"run_id": run_id, "stage": stage,
                         "name": "model" if stage == "train" else "eval", "sweep": "s1",
                         "point": point, "status": "incomplete" if failed else "completed",
                         "started_at": start + pd.Timedelta(minutes=3 * i + (stage == "eval")),
                         "wall_time_s": 60.0, "peak_rss_mb": 500.0})
            params += [(run_id, k, json.dumps(v)) for k, v in world.items()]
            if stage == "train":
                train_runs.append(run_id)
        if not failed:
            acc = recall_of(d_model, people) if mode != "tool" else 0.0
            tool = 0.95 if mode == "tool" else 0.0
            run_id = f"sweeps/s1/{point}/eval"
            bits = acc * people * 6 * 8
            evals += [(run_id, "model", "parameters", "model", None, float(n_params(d_model)),
                       None, None),
                      (run_id, "model", "knowledge_bits", "trained", None, bits, 64, None),
                      (run_id, "model", "recall", "trained", None, acc, 64, None),
                      (run_id, "model", "tool_accuracy", "trained", None, tool, 64, None),
                      (run_id, "model", "tool_accuracy", "heldout", None, tool * 0.98, 64, None),
                      (run_id, "model", "recall", "trained", "birth_city", 0.123456, 8, None)]
    # a checkpoint series of the first training run (evals rows with a step)
    evals += [(train_runs[0], "model", "tool_accuracy", split, None, step / steps, 16, step)
              for step in range(10, steps + 1, 10) for split in ("trained", "heldout")]
    if pipeline:
        for k, name in enumerate(["teacher", "student", "distill"]):
            runs.append({"run_id": name, "stage": "distill" if name == "distill" else "train",
                         "name": name, "sweep": None, "point": None, "status": "completed",
                         "started_at": start - pd.Timedelta(hours=3 - k), "wall_time_s": 1234.5,
                         "peak_rss_mb": 700.0})
            params += [(name, "world.people", "1000"), (name, "world.tool_dialogs", "true")]
            train_runs.append(name)
        runs.append({"run_id": "eval", "stage": "eval", "name": "eval", "sweep": None,
                     "point": None, "status": "completed",
                     "started_at": start - pd.Timedelta(minutes=30), "wall_time_s": 50.0,
                     "peak_rss_mb": 600.0})
        for j, model in enumerate(["teacher", "student", "distilled", "quantized"]):
            evals += [("eval", model, "recall", "trained", None, 0.0, 200, None),
                      ("eval", model, "tool_accuracy", "trained", None, 0.9876 - j / 10, 200, None),
                      ("eval", model, "tool_accuracy", "heldout", None, 0.9654 - j / 10, 200, None),
                      ("eval", model, "weight_bytes", "model", None, 593408 / (1 + j), None, None),
                      ("eval", model, "parameters", "model", None, 148352.0, None, None)]
    for table, rows, columns in [
            ("runs", runs, None),
            ("params", params, ["run_id", "key", "value"]),
            ("evals", evals, ["run_id", "model", "metric", "split", "attribute", "value", "n",
                              "step"]),
            ("sweep_points", points, ["sweep", "point", "status", "exp", "attempts",
                                      "wall_time_s", "error", "params"])]:
        if table not in schema or not rows:
            continue
        frame = pd.DataFrame(rows, columns=columns)
        known = [c.split()[0] for c in schema[table].split(", ")]
        frame = frame[[c for c in frame.columns if c in known]]
        con.register("frame", frame)
        con.execute(f"INSERT INTO {table} ({', '.join(frame.columns)}) SELECT * FROM frame")
        con.unregister("frame")
    # metrics: every training run logs TRAIN_METRICS and tokens every step, val_loss every 5th,
    # and recall / tool_accuracy every 10th step
    con.register("train_runs", pd.DataFrame({"run_id": train_runs,
                                             "k": range(len(train_runs))}))
    names = ", ".join(f"('{m}')" for m in TRAIN_METRICS + ["tokens"])
    con.execute(f"""
        INSERT INTO metrics
        SELECT run_id, s * 25, name,
               CASE name WHEN 'tokens' THEN s * 25 * 3100.0
                         WHEN 'loss' THEN 0.05 + 5 * exp(-s / ({steps} / 4.0)) + k / 1000.0
                         WHEN 'lr' THEN 0.003 * least(1.0, s / 10.0)
                         ELSE 1 + (s % 7) / 10.0 END
        FROM train_runs, range({steps}) u(s), (VALUES {names}) n(name)""")
    con.execute(f"""
        INSERT INTO metrics
        SELECT run_id, s * 25, name,
               CASE name WHEN 'val_loss' THEN 0.06 + 5 * exp(-s / ({steps} / 4.0)) + k / 1000.0
                         WHEN 'recall' THEN 0.5 * s / {steps} ELSE s / {steps} END
        FROM train_runs, range(0, {steps}, 5) u(s), (VALUES ('val_loss'), ('recall'),
                                                       ('tool_accuracy')) n(name)
        WHERE name = 'val_loss' OR s % 10 = 0""")
    con.unregister("train_runs")
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in schema}
    con.close()
    return counts


def render(db: Path, out: Path, **options: Any) -> dict[str, str]:
    render_report(db, out, **options)
    return {name: (out / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}


def spec(page: str, div_id: str) -> dict[str, Any]:
    """The Vega-Lite spec a page embeds in `div_id`."""
    match = re.search(r'vegaEmbed\("#' + div_id + r'", (.*?), \{"mode": "vega-lite"\}\)', page)
    assert match, f"no chart {div_id}"
    return json.loads(match.group(1).replace("<\\/", "</"))


def html_table(fragment: str) -> pd.DataFrame:
    """The first HTML table in `fragment`, every cell as its text."""
    def cells(row: str, tag: str) -> list[str]:
        return [htmllib.unescape(c) for c in re.findall(f"<{tag}>(.*?)</{tag}>", row)]

    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", fragment[fragment.index("<table"):], re.DOTALL)
    return pd.DataFrame([cells(r, "td") for r in rows[1:]], columns=cells(rows[0], "th"))


def inline_rows(chart: dict[str, Any]) -> list[dict[str, str]]:
    """The rows of a spec's inline CSV data."""
    data = chart["data"]
    text = data["values"] if "values" in data else chart["datasets"][data["name"]]
    header, *lines = text.strip().split("\n")
    return [dict(zip(header.split(","), line.split(","))) for line in lines]


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("sweep") / "runs.duckdb"
    make_store(db)
    return db


@pytest.fixture(scope="module")
def html(sweep_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return render(sweep_db, tmp_path_factory.mktemp("report"))


def test_index_has_one_row_per_sweep_point_with_params_and_headline_figures(html) -> None:
    index = html["index"]
    table = html_table(index[index.index("<h2>Sweeps</h2>"):index.index("<h2>Runs</h2>")])
    assert len(table) == 19 and table["point"].tolist()[0] == "p0000"
    assert {"world.people", "teacher.model.d_model", "mode", "status", "recall (no tool)",
            "tool accuracy", "knowledge bits", "parameters"} <= set(table.columns)
    first = table.iloc[0]                      # d=32, 25 people, tool
    assert first["mode"] == "tool" and first["tool accuracy"] == "0.9500"
    assert first["parameters"] == f"{n_params(32):,}"
    second = table.iloc[1]                     # the same without the tool: recall from the weights
    assert second["recall (no tool)"] == f"{recall_of(32, 25):.4f}"
    failed, pending = table.iloc[17], table.iloc[18]
    assert failed["status"] == "failed" and "loss is NaN" in failed["error"]
    assert failed["eval run"] == "–" and pending["status"] == "pending"
    assert "0.1235" not in index               # a per-attribute row is not a headline figure
    assert "<code>s1</code>: 19 points (17 completed, 1 failed, 1 pending)" in index
    assert "<td>sweeps/s1/p0016/eval</td>" in index      # runs table, newest first


def test_curves_dropdown_colour_and_thinning(html) -> None:
    curves = html["curves"]
    chart = spec(curves, "curves")
    metric = next(p for p in chart["params"] if p["name"] == "metric")
    # the distill run's logged loss is its objective: its own entry, not "loss" (cross-entropy)
    assert metric["bind"]["labels"][:4] == ["loss", "val_loss", "distill objective", "recall"]
    assert set(metric["bind"]["labels"]) >= set(TRAIN_METRICS) | {"tokens", "tool_accuracy"}
    # colour: the first parameter varying across the sweep points, as a legend
    lines = [panel["layer"][0] for panel in chart["hconcat"]]   # [1]: the y axis title
    colour = lines[0]["encoding"]["color"]
    assert colour["title"] == "world.people" and colour["sort"] == ["25", "100", "400", "1000"]
    assert [c["encoding"]["x"]["title"] for c in lines] == ["optimizer step (count)",
                                                            "tokens seen (count)"]
    rows = inline_rows(chart)
    assert len(rows) <= POINT_BUDGET and {r["m"] for r in rows} == {
        str(i) for i in range(len(metric["bind"]["labels"]))}
    lookup_data = lines[0]["transform"][3]["from"]["data"]
    lookup = (chart["datasets"][lookup_data["name"]] if "name" in lookup_data
              else lookup_data["values"])
    assert {r["run"]: r["c"] for r in lookup}["sweeps/s1/p0002/model"] == "100"
    assert {r["run"]: r["point"] for r in lookup}["sweeps/s1/p0004/model"] == "s1/p0004"


def test_tool_chart_joins_logged_accuracy_and_checkpoint_evals(html) -> None:
    chart = spec(html["curves"], "step_accuracy")
    series = {r["metric"] for r in inline_rows(chart)}
    assert series == {"recall", "tool_accuracy", "tool_accuracy (held-out)"}
    assert chart["encoding"]["strokeDash"]["field"] == "metric"
    assert chart["encoding"]["y"]["scale"]["domain"] == [0, 1]


def test_scaling_page_draws_capacity_and_contours(html) -> None:
    scaling = html["scaling"]
    knowledge = spec(scaling, "knowledge")
    assert "2 bits/param" in json.dumps(knowledge)
    points = next(layer for layer in knowledge["layer"] if layer["mark"]["type"] == "point")
    assert points["encoding"]["x"]["scale"]["type"] == "log"
    assert points["encoding"]["shape"]["field"] == "mode"
    assert "models store 0 bits and are not drawn" in scaling   # the tool-mode models

    contours = spec(scaling, "contours")
    tool, recall = contours["hconcat"]
    assert tool["title"].startswith("with the tool") and recall["title"].startswith("without")
    marks = [layer["mark"]["type"] for layer in recall["layer"]]
    assert marks[0] == "rect" and "line" in marks and "text" in marks and marks[-1] == "point"
    datasets = contours["datasets"]
    levels = {row["level"] for rows in datasets.values() for row in rows if "level" in row}
    assert {0.25, 0.5} <= levels
    # 3 × 3 lattices: all 9 tool points (accuracy 0.95 everywhere: no level crossed); 8 of the
    # no-tool points (the failed point has no eval run)
    assert ("9 models on a 3 × 3 lattice of (parameters, facts), 9 cells measured, 0 missing; "
            "no contour level is crossed") in scaling
    assert ("8 models on a 3 × 3 lattice of (parameters, facts), 8 cells measured, "
            "1 missing.") in scaling
    assert scaling.count('<p class="howto">') == 3
    # the pipeline's models (one size, no world) are not on the map: one point per model
    models = spec(scaling, "models")
    assert [p["title"].split(":")[0] for p in models["hconcat"]] == ["with the tool",
                                                                     "without the tool"]


def test_distillation_page_uses_the_pipeline_eval_run_not_the_sweep(html) -> None:
    dist = html["distillation"]
    assert "From eval run <code>eval</code>" in dist and "<td>0.9876</td>" in dist
    chart = spec(dist, "evals")
    titles = {p["title"]: p["layer"][0]["encoding"]["y"]["title"] for p in chart["concat"]}
    assert titles["tool_accuracy / trained"] == "tool accuracy (fraction correct)"  # own y axis
    assert 'vegaEmbed("#distill"' in dist                        # the distill run's val_loss


def test_only_sweep_evals_say_so_on_the_distillation_page(tmp_path: Path) -> None:
    make_store(tmp_path / "db.duckdb", n_points=4, pipeline=False)
    html = render(tmp_path / "db.duckdb", tmp_path / "out")
    assert "No eval run of the pipeline's models yet" in html["distillation"]
    assert "No distillation run" in html["distillation"]


def test_color_by_a_param_a_runs_column_or_an_unknown_key(sweep_db: Path, tmp_path: Path) -> None:
    def colour(**options: Any) -> tuple[dict[str, Any], str]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        curves = render(sweep_db, out, **options)["curves"]
        return spec(curves, "curves")["hconcat"][0]["layer"][0]["encoding"]["color"], curves

    encoding, _ = colour(color_by="mode")
    assert encoding["title"] == "mode" and encoding["type"] == "nominal"
    encoding, _ = colour(color_by="stage")
    assert encoding["title"] == "stage"
    encoding, curves = colour(color_by="no.such.key")
    assert encoding["title"] == "run" and encoding["legend"] is None   # 20+ runs: no legend
    assert "No run has the parameter <code>no.such.key</code>" in curves


def test_an_older_store_without_sweeps_or_checkpoint_evals(tmp_path: Path) -> None:
    make_store(tmp_path / "old.duckdb", n_points=6, old_schema=True)
    html = render(tmp_path / "old.duckdb", tmp_path / "out")
    assert "No sweep yet" in html["index"] and 'vegaEmbed("#curves"' in html["curves"]
    # one size (d_model 32) at three fact counts: no lattice to map, a point per model instead
    assert 'vegaEmbed("#models"' in html["scaling"] and "From eval run" in html["distillation"]
    assert 'vegaEmbed("#contours"' not in html["scaling"]


def test_png_export_writes_every_chart(tmp_path: Path) -> None:
    make_store(tmp_path / "db.duckdb", n_points=6, steps=12)
    render_report(tmp_path / "db.duckdb", tmp_path / "out", png=True)
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["curves-curves.png", "curves-step_accuracy.png", "distillation-distill.png",
                    "distillation-evals.png", "scaling-knowledge.png", "scaling-models.png",
                    "sweeps-sweep-curves-0.png"]
    assert all((tmp_path / "out" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_a_thousand_runs_and_a_million_metric_rows_render_thinned_pages(tmp_path: Path) -> None:
    # the time it takes is bench/store_reports.py's to measure, not a test's
    # 500 points: 500 training runs + 499 eval runs (the last point failed) + 4 pipeline runs;
    # ~2,000 metric rows per training run (3 pipeline runs train too)
    steps = 1_000_000 // (503 * (len(TRAIN_METRICS) + 1))
    counts = make_store(tmp_path / "big.duckdb", n_points=500, steps=steps)
    assert counts["runs"] >= 1000 and counts["metrics"] >= 1_000_000
    render_report(tmp_path / "big.duckdb", tmp_path / "out")
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "out").glob("*.html")}
    assert sizes["curves.html"] < 6e6 and max(sizes.values()) < 6e6, sizes
    rows = inline_rows(spec((tmp_path / "out" / "curves.html").read_text(), "curves"))
    per_curve = pd.DataFrame(rows).groupby(["r", "m"]).size()
    assert per_curve.max() <= MAX_POINTS_PER_CURVE + 1 and len(rows) <= POINT_BUDGET * 1.2


SYNTHETIC = ROOT / "bench" / "synthetic_runs.py"


@pytest.mark.skipif(not SYNTHETIC.is_file(), reason="bench/synthetic_runs.py not present")
def test_synthetic_run_folders_through_the_real_store(tmp_path: Path) -> None:
    from lmpipe.store.index import index_runs

    module_spec = importlib.util.spec_from_file_location("synthetic_runs", SYNTHETIC)
    synthetic = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(synthetic)
    synthetic.write_synthetic_runs(tmp_path / "runs", runs=45, metric_rows=40_000)
    index_runs(tmp_path / "runs", tmp_path / "db.duckdb")
    html = render(tmp_path / "db.duckdb", tmp_path / "out")
    for name, div in [("curves", "curves"), ("curves", "step_accuracy"), ("scaling", "knowledge"),
                      ("scaling", "contours"), ("distillation", "evals"),
                      ("distillation", "distill")]:
        assert f'vegaEmbed("#{div}"' in html[name], (name, div)
    assert html["index"].count("<td>completed</td>") >= 20
