"""scaling.html's architecture comparison (lmpipe/report/scaling_archs.py): a store written by hand
with a seeded sweep over arch x size in the tool world, as recipes/in-tool-learning/archs.yaml runs
it; each point of the chart is the mean over its seeds with the lowest and highest, per arch, and
a single-arch store draws no comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lmpipe.report import scaling, scaling_data
from lmpipe.report.scaling_archs import arch_rows
from lmpipe.report.source import Source
from tests.report.hand_store import POINTS, write_store
from tests.report.test_report_sweep import spec

SIZES = {"llama": [(48, 86_688), (64, 148_352)], "mamba2": [(52, 87_000), (70, 149_000)],
         "hawk": [(48, 88_608), (64, 150_912)]}
# (tool accuracy trained, held-out, recall) per arch, size index and seed: distinct values, so a
# mean over the wrong runs, or across archs, gives a number the test does not expect
FIGURES = {
    ("llama", 0): [(0.90, 0.80, 0.10), (1.00, 0.90, 0.20)],
    ("llama", 1): [(1.00, 1.00, 0.30), (1.00, 0.98, 0.50)],
    ("mamba2", 0): [(0.40, 0.30, 0.00), (0.60, 0.50, 0.02)],
    ("mamba2", 1): [(0.70, 0.60, 0.04), (0.90, 0.70, 0.06)],
    ("hawk", 0): [(0.20, 0.10, 0.00), (0.30, 0.20, 0.00)],
    ("hawk", 1): [(0.50, 0.40, 0.10), (0.70, 0.60, 0.20)],
}


def make_store(db_path: Path, archs: list[str]) -> None:
    """A completed seeded sweep: one eval run per (arch, size, seed) point in the tool world."""
    runs, params, evals, points = [], [], [], []
    start = pd.Timestamp("2026-12-04 08:00")
    i = 0
    for arch in archs:
        for size, (d_model, n_params) in enumerate(SIZES[arch]):
            group = f"g-{arch}-{size}"
            for seed, (tool, heldout, recall) in enumerate(FIGURES[arch, size]):
                point = f"p{i:02d}"
                overrides = {"teacher.model.arch": arch, "teacher.model.d_model": d_model,
                             "teacher.train.seed": seed}
                points.append(("a1", point, "completed", f"a1-{point}", 1, 100.0, None,
                               json.dumps(overrides), group, seed))
                run_id = f"sweeps/a1/{point}/eval"
                runs.append({"run_id": run_id, "stage": "eval", "name": "eval", "sweep": "a1",
                             "point": point, "point_group": group, "seed": seed,
                             "status": "completed", "started_at": start + pd.Timedelta(minutes=i)})
                resolved = {"world.people": 100, "world.tool_dialogs": True,
                            "world.qa_dialogs": False, "teacher.model.d_model": d_model}
                if arch != "llama":
                    resolved["teacher.model.arch"] = arch
                params += [(run_id, k, json.dumps(v)) for k, v in resolved.items()]
                evals += [(run_id, "teacher", "parameters", "model", None, float(n_params),
                           None, None),
                          (run_id, "teacher", "tool_accuracy", "trained", None, tool, 600, None),
                          (run_id, "teacher", "tool_accuracy", "heldout", None, heldout, 300,
                           None),
                          (run_id, "teacher", "recall", "trained", None, recall, 600, None)]
                i += 1
    write_store(db_path, runs=runs, params=params, evals=evals, points=points,
                point_columns=POINTS + ["point_group", "seed"])


def page_and_models(tmp_path: Path, archs: list[str]) -> tuple[str, pd.DataFrame]:
    db = tmp_path / "runs.duckdb"
    make_store(db, archs)
    src = Source.open(db)
    try:
        return scaling.build(src).html(), scaling_data.load(src)
    finally:
        src.close()


def test_each_point_is_the_mean_over_its_seeds_with_min_and_max_per_arch(tmp_path: Path) -> None:
    page, models = page_and_models(tmp_path, ["llama", "mamba2", "hawk"])
    rows = arch_rows(models)
    measures = ["tool accuracy, trained people", "tool accuracy, held-out people",
                "recall without the tool, trained people"]
    assert sorted(set(rows["measure"])) == sorted(measures)
    assert len(rows) == 3 * 2 * 3  # archs x sizes x measures: the two seeds in one point
    for (arch, size), seeds in FIGURES.items():
        for m, measure in enumerate(measures):
            [row] = rows[(rows["arch"] == arch) & (rows["measure"] == measure)
                         & (rows["parameters"] == SIZES[arch][size][1])].to_dict("records")
            values = [s[m] for s in seeds]
            assert row["value"] == sum(values) / 2
            assert (row["lo"], row["hi"], row["n"]) == (min(values), max(values), 2)
    chart = spec(page, "archs")
    assert chart["facet"]["column"]["field"] == "measure"
    drawn = [r for rs in chart["datasets"].values() for r in rs]
    assert {r["arch"] for r in drawn} == {"llama", "mamba2", "hawk"}
    # the table: mamba2's small model, tool accuracy on trained people over its two seeds
    assert "0.500 (0.400–0.600)" in page


def test_one_arch_draws_no_comparison(tmp_path: Path) -> None:
    page, models = page_and_models(tmp_path, ["llama"])
    assert arch_rows(models).empty
    assert 'vegaEmbed("#archs"' not in page
    assert "Architectures compared" not in page
