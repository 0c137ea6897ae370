"""Replicates: a sweep with `seeds` written as run folders by hand (three seeds of every point),
indexed into the store, aggregated by its views (lmpipe/store/spread.py) and drawn by the reports
as mean with min–max: the sweep table, the curves' bands, the distillation bars and table, and the
scaling page's lattice table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmpipe.report.render import render_report
from lmpipe.store.index import index_runs, query
from tests.report.test_report_sweep import html_table, inline_rows, spec
from tests.run_folders import write

SEEDS = [0, 1, 2]
SEED_KEYS = ["teacher.train.seed", "eval.seed"]
PEOPLE = [25, 100]
D_MODEL = [32, 64]
MODELS = ["teacher", "student", "distilled", "quantized"]


def tool_accuracy(people: int, d_model: int, seed: int) -> float:
    """0.90 / 0.93 / 0.96 over the seeds, lower for more people, higher for a wider model."""
    return round(0.90 + 0.03 * seed - people / 10_000 + d_model / 10_000, 6)


def recall(people: int, d_model: int, seed: int) -> float:
    return round(min(1.0, 2 * d_model / people) * (0.5 + 0.1 * seed), 6)


def held_out(model: int, seed: int) -> float:
    """The pipeline sweep's held-out tool accuracy of MODELS[model]: seeds 0.2 apart."""
    return round(0.5 + 0.1 * model + 0.02 * seed, 6)


def summary(stage: str, name: str, minute: int) -> dict[str, Any]:
    return {"stage": stage, "name": name, "status": "completed",
            "started_at": f"2026-11-23T10:{minute:02d}:00+00:00",
            "ended_at": f"2026-11-23T10:{minute:02d}:30+00:00", "wall_time_s": 30.0,
            "peak_rss_mb": 500.0}


def write_sweep(root: Path, sweep: str, combos: list[dict[str, Any]], *, start: int,
                models: list[str], evals: Any, loss: Any) -> None:
    """A sweep of `combos` × SEEDS as lmpipe/sweep/flow.py and sweep_run.py write it: sweep.json,
    and per point a point.json, a training run (`teacher`) and an eval run (`eval`)."""
    folder = root / "sweeps" / sweep
    points, minute = [], start
    for seed in SEEDS:
        for i, combo in enumerate(combos):
            group, point = f"p{i:02d}", f"p{i:02d}s{seed}"
            params = {**combo, **dict.fromkeys(SEED_KEYS, seed)}
            record = {"point": point, "group": group, "seed": seed, "params": params,
                      "status": "completed", "exp": f"{sweep}-{point}", "attempts": 1,
                      "wall_time_s": 60.0, "error": None}
            points.append(record)
            write(folder / point / "point.json", {"sweep": sweep, **record})
            tree: dict[str, Any] = {}
            for key, value in params.items():
                section, *rest = key.split(".")
                node = tree.setdefault(section, {})
                for part in rest[:-1]:
                    node = node.setdefault(part, {})
                node[rest[-1]] = value
            tree.setdefault("world", {}).update({"tool_dialogs": True, "qa_dialogs": True})
            for run, stage in (("teacher", "train"), ("eval", "eval")):
                write(folder / point / run / "params.json", tree)
                write(folder / point / run / "summary.json", summary(stage, run, minute))
                minute += 1
            write(folder / point / "teacher" / "metrics.jsonl",
                  [{"step": s, "tokens": s * 1000, "loss": loss(combo, seed, s),
                    **({"tool_accuracy": min(1.0, s / 100 + seed / 100)} if s % 20 == 0 else {})}
                   for s in range(1, 101)])
            write(folder / point / "eval" / "evals.jsonl",
                  [{"model": m, "metric": metric, "split": split, "attribute": None,
                    "value": value, "n": 64}
                   for j, m in enumerate(models)
                   for metric, split, value in evals(combo, seed, j)])
    write(folder / "sweep.json", {
        "sweep": sweep, "name": sweep.split("-")[0], "grid": f"{sweep}.yaml",
        "axes": {"cross": {k: sorted({c[k] for c in combos}) for k in combos[0]}, "zip": [],
                 "seeds": SEEDS, "seed_keys": SEED_KEYS},
        "points": points})


def lattice_evals(combo: dict[str, Any], seed: int, _: int) -> list[tuple[str, str, float]]:
    people, d_model = combo["world.people"], combo["teacher.model.d_model"]
    return [("tool_accuracy", "trained", tool_accuracy(people, d_model, seed)),
            ("recall", "trained", recall(people, d_model, seed)),
            ("knowledge_bits", "trained", 100.0 * d_model + seed),
            ("parameters", "model", 1000.0 * d_model)]


def pipeline_evals(combo: dict[str, Any], seed: int, j: int) -> list[tuple[str, str, float]]:
    return [("tool_accuracy", "heldout", held_out(j, seed)),
            ("tool_accuracy", "trained", held_out(j, seed) + 0.01),
            ("weight_bytes", "model", 1000.0 / (j + 1)), ("parameters", "model", 5000.0)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spread") / "runs"
    combos = [{"world.people": p, "teacher.model.d_model": d} for d in D_MODEL for p in PEOPLE]
    write_sweep(root, "lattice-1a2b", combos, start=0, models=["model"], evals=lattice_evals,
                loss=lambda c, seed, s: 1.0 + seed / 10 + 10 / s)
    write_sweep(root, "pipe-3c4d", [{}], start=40, models=MODELS, evals=pipeline_evals,
                loss=lambda c, seed, s: 2.0 + seed / 10 + 10 / s)
    db = root.parent / "store.duckdb"
    index_runs(root, db)
    return db


@pytest.fixture(scope="module")
def html(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("report")
    render_report(store, out)
    return {p: (out / f"{p}.html").read_text(encoding="utf-8")
            for p in ("index", "curves", "scaling", "distillation")}


def test_the_store_records_groups_and_seeds(store: Path) -> None:
    runs = query(store, "SELECT run_id, point, point_group, seed FROM runs "
                        "WHERE run_id LIKE 'sweeps/lattice-1a2b/p01s%/teacher' ORDER BY run_id")
    assert runs["point_group"].tolist() == ["p01"] * 3 and runs["seed"].tolist() == SEEDS
    points = query(store, "SELECT point, point_group, seed, group_params FROM sweep_points "
                          "WHERE sweep = 'lattice-1a2b' AND point_group = 'p00' ORDER BY seed")
    assert points["point"].tolist() == ["p00s0", "p00s1", "p00s2"]
    assert {json.dumps(json.loads(p), sort_keys=True) for p in points["group_params"]} == {
        json.dumps({"world.people": 25, "teacher.model.d_model": 32}, sort_keys=True)}


def test_eval_spread_gives_mean_min_max_n_per_group(store: Path) -> None:
    rows = query(store, """
        SELECT point_group, mean, min, max, n, seeds FROM eval_spread
        WHERE sweep = 'lattice-1a2b' AND metric = 'tool_accuracy' AND attribute IS NULL
        ORDER BY point_group""")
    assert rows["point_group"].tolist() == ["p00", "p01", "p02", "p03"]
    values = [tool_accuracy(25, 32, s) for s in SEEDS]
    first = rows.iloc[0]
    assert first["mean"] == pytest.approx(sum(values) / 3)
    assert (first["min"], first["max"], first["n"]) == (pytest.approx(values[0]),
                                                        pytest.approx(values[2]), 3)
    assert list(first["seeds"]) == SEEDS
    groups = query(store, "SELECT point_group, n, completed, params, seeds FROM sweep_groups "
                          "WHERE sweep = 'lattice-1a2b' ORDER BY point_group")
    assert groups["n"].tolist() == [3] * 4 and groups["completed"].tolist() == [3] * 4
    assert json.loads(groups["params"][3]) == {"world.people": 100, "teacher.model.d_model": 64}
    # metrics: the loss at step 100 is 1.1 + seed / 10 for every point
    loss = query(store, "SELECT mean, min, max, n FROM metric_spread WHERE name = 'loss' "
                        "AND step = 100 AND group_id = 'lattice-1a2b/p02/teacher'").iloc[0]
    assert (loss["mean"], loss["min"], loss["max"], loss["n"]) == (
        pytest.approx(1.2), pytest.approx(1.1), pytest.approx(1.3), 3)
    # a run outside any replicate group is its own group of one
    groups = query(store, "SELECT group_id, replicates FROM run_groups "
                          "WHERE run_id = 'sweeps/pipe-3c4d/p00s1/eval'").iloc[0]
    assert (groups["group_id"], groups["replicates"]) == ("pipe-3c4d/p00/eval", 3)


def test_the_sweep_table_has_one_row_per_group_with_mean_and_range(html: dict[str, str]) -> None:
    index = html["index"]
    assert "12 points (12 completed) in 4 groups of replicates" in index
    table = html_table(index[index.index("<h2>Sweeps</h2>"):index.index("<h2>Runs</h2>")])
    lattice = table[table["sweep"] == "lattice-1a2b"].set_index("group")
    assert len(lattice) == 4 and len(table) == 5
    assert "teacher.train.seed" not in table.columns            # the seed keys are not params
    first = lattice.loc["p00"]
    assert (first["world.people"], first["teacher.model.d_model"]) == ("25", "32")
    assert first["seeds"] == "0, 1, 2" and first["status"] == "3 completed"
    values = [tool_accuracy(25, 32, s) for s in SEEDS]
    assert first["tool accuracy"] == (f"{sum(values) / 3:.4f} "
                                      f"({min(values):.4f}–{max(values):.4f})")
    assert first["parameters"] == "32,000"                      # the same in every replicate
    assert first["replicates evaluated"] == "3"


def test_curves_draw_the_mean_with_a_min_max_band(html: dict[str, str]) -> None:
    chart = spec(html["curves"], "curves")
    panel = chart["hconcat"][0]["layer"][0]   # [1] is the y axis title
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
             for layer in panel["layer"]]
    assert marks == ["area", "line"]
    rows = inline_rows(chart)
    lookup = panel["transform"][3]["from"]["data"]
    runs = chart["datasets"][lookup["name"]] if "name" in lookup else lookup["values"]
    index = {r["run"]: r["r"] for r in runs}
    # one curve per group and run name, not per replicate
    assert "lattice-1a2b/p02/teacher" in index and "sweeps/lattice-1a2b/p02s1/teacher" not in index
    assert {r["run"]: r["n"] for r in runs}["lattice-1a2b/p02/teacher"] == 3
    loss = next(r for r in rows if r["r"] == str(index["lattice-1a2b/p02/teacher"])
                and r["m"] == "0" and r["s"] == "100")
    assert (float(loss["v"]), float(loss["l"]), float(loss["h"])) == (
        pytest.approx(1.2), pytest.approx(1.1), pytest.approx(1.3))
    # the default colour is the first parameter the sweep varies, never a seed key
    assert panel["encoding"]["color"]["title"] == "teacher.model.d_model"   # first in the store
    tool = spec(html["curves"], "step_accuracy")
    assert [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
            for layer in tool["layer"]] == ["area", "line"]
    point = next(r for r in inline_rows(tool) if r["s"] == "20"
                 and r["r"] == str(index["lattice-1a2b/p00/teacher"]))
    assert (float(point["v"]), float(point["l"]), float(point["h"])) == (
        pytest.approx(0.21), pytest.approx(0.2), pytest.approx(0.22))


def test_colouring_by_a_seed_key_shows_every_replicate(store: Path, tmp_path: Path) -> None:
    render_report(store, tmp_path, color_by="teacher.train.seed")
    chart = spec((tmp_path / "curves.html").read_text(), "curves")
    line = chart["hconcat"][0]["layer"][0]                       # [1] is the y axis title
    assert "layer" not in line                                   # one line per run, no band
    assert line["encoding"]["color"]["title"] == "teacher.train.seed"


def test_distillation_bars_and_table_show_the_replicates_spread(html: dict[str, str]) -> None:
    dist = html["distillation"]
    assert "3 replicates" in dist and "pipe-3c4d/p00/eval" in dist
    chart = spec(dist, "evals")
    panel = next(p for p in chart["concat"] if p["title"] == "tool_accuracy / heldout")
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
             for layer in panel["layer"]]
    assert marks == ["bar", "rule", "text"]
    rule = panel["layer"][1]
    assert rule["encoding"]["y"]["field"] == "value_min"
    assert rule["encoding"]["y2"]["field"] == "value_max"
    start = dist.index("<h3>Overall numbers per model</h3>")
    table = html_table(dist[start:dist.index("</table>", start)]).set_index("measure")
    values = [held_out(2, s) for s in SEEDS]
    assert table.loc["tool_accuracy / heldout", "distilled"] == (
        f"{sum(values) / 3:.4f} ({min(values):.4f}–{max(values):.4f})")
    assert table.loc["weight_bytes / model", "teacher"] == "1,000"     # a count: no decimals


def test_the_scaling_lattice_table_gives_the_range_of_each_cell(html: dict[str, str]) -> None:
    scaling = html["scaling"]
    start = scaling.index("<h3>with the tool")
    table = html_table(scaling[start:scaling.index("</table>", start)]
                       ).set_index("facts \\ parameters")
    values = [tool_accuracy(25, 32, s) for s in SEEDS]
    assert table.loc["150", "32,000"] == (f"{sum(values) / 3:.3f} "
                                          f"({min(values):.3f}–{max(values):.3f})")
    contours = spec(scaling, "contours")
    cells = next(rows for rows in contours["datasets"].values() if rows and "x2" in rows[0])
    cell = next(c for c in cells if c["xc"] == pytest.approx(32_000) and c["yc"] == pytest.approx(150))
    assert (cell["n"], cell["lo"], cell["hi"]) == (3, pytest.approx(min(values)),
                                                   pytest.approx(max(values)))


def load_bench() -> Any:
    import importlib.util

    module_spec = importlib.util.spec_from_file_location(
        "bench_pipeline", Path(__file__).resolve().parents[2] / "bench" / "pipeline.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def bench_results(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """What `bench/pipeline.py --seeds 3 --out` writes, with made-up figures."""
    runs = []
    for seed in SEEDS:
        table = {model: {"parameters": 86688.0, "val_loss": 0.01 * (1 + seed),
                         "recall_trained": 0.0, "knowledge_bits_trained": 0.0,
                         "tool_accuracy_trained": 0.9 + 0.01 * seed,
                         "tool_accuracy_heldout": held_out(j, seed),
                         "weight_bytes": 346752.0 / (j + 1)}
                 for j, model in enumerate(["teacher", "student", "distilled", "quantized"])}
        runs.append({"seed": seed, "timings": {}, "total_s": 250.0 + 10 * seed, "eval": table,
                     "exports": {}})
    return {"date": "2026-12-05", "machine": {"cores": 2, "arch": "x86_64", "python": "3.11.7",
                                              "torch": "2.13.0+cpu", "gpu": None},
            "overrides": overrides, "params": params, "runs": runs}


def test_the_bench_writes_the_readme_block_from_its_figures(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    bench = load_bench()
    project_readme = tmp_path / "project-README.md"     # never the real one, whatever happens
    project_readme.write_text(f"{bench.START}\n{bench.END}\n")
    monkeypatch.setattr(bench, "README", project_readme)
    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{bench.START}\nold table\n{bench.END}\n\nafter\n")
    source = tmp_path / "figures.json"
    source.write_text(json.dumps(bench_results(params, [])))
    bench.main(["--from", str(source), "--write-readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{bench.END}\n\nafter\n")
    assert "old table" not in text and text.count(bench.START) == 1
    assert ("Measured with `bench/pipeline.py --seeds 3` on 2026-12-05 (2 CPU cores, x86_64, "
            "no GPU, Python 3.11.7, torch 2.13.0+cpu; 3 cold starts") in text
    assert "260 (250–270) s a run" in text
    values = [held_out(2, s) for s in SEEDS]
    row = next(line for line in text.splitlines() if line.startswith("| distilled student"))
    steps = params["distill"]["train"]["steps"]                # the project's, in the caption
    assert row == (f"| distilled student (KL + CE + attention KL, {steps} steps) | 86,688 | "
                   "0.0200 (0.0100–0.0300) | 0.910 (0.900–0.920) | "
                   f"{sum(values) / 3:.3f} ({min(values):.3f}–{max(values):.3f}) | 115,584 |")
    assert "Recall without the tool is 0.000 for every model; knowledge bits are 0" in text
    share = [held_out(3, s) / held_out(2, s) for s in SEEDS]
    assert f"ternary QAT keeps {sum(share) / 3:.1%} ({min(share):.1%}–{max(share):.1%})" in text
    # made-up teachers reach 0.50-0.54 held-out: no seed passes the headline
    assert text.rstrip().endswith(f"0 of 3 seeds pass.\n{bench.END}\n\nafter")
    results = bench_results(params, [])
    results["runs"][1]["eval"]["teacher"]["tool_accuracy_heldout"] = 0.9   # 0.9 counts
    results["runs"][2]["eval"]["teacher"]["tool_accuracy_heldout"] = 0.95
    results["runs"][2]["eval"]["distilled"]["tool_accuracy_heldout"] = held_out(1, 2)  # = scratch
    assert [line.rsplit(": ", 1)[1] for line in bench.headline_checks(results)] == \
        ["FAIL", "PASS", "FAIL"]
    bench.main(["--from", str(source), "--write-readme", str(readme)])   # idempotent
    assert readme.read_text() == text
    # figures from an overridden experiment never land in the project's README
    source.write_text(json.dumps(bench_results(params, ["teacher.train.steps=5"])))
    with pytest.raises(SystemExit, match="refusing to write README.md"):
        bench.main(["--from", str(source), "--write-readme"])
    assert project_readme.read_text() == f"{bench.START}\n{bench.END}\n"
