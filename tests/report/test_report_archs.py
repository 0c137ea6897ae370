"""scaling.html over models of several architectures (issue 19): a store written by hand with the
store's schema, a sweep over arch x size x people as recipes/in-tool-learning/archs.yaml runs it,
and the page keeps the architectures apart: one knowledge panel and one accuracy map per arch, and
the arch in every per-model label. A single-arch store draws exactly as before."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lmpipe.report import scaling, scaling_data, scaling_models
from lmpipe.report.source import Source
from tests.report.hand_store import write_store
from tests.report.test_report_sweep import spec

# (arch, width) pairs at matched parameter counts, as the recipe's grid pairs them
SIZES = {"llama": [(48, 86_688), (64, 148_352)], "mamba": [(66, 87_120), (91, 148_148)],
         "mamba2": [(72, 89_510), (96, 147_464)], "hawk": [(48, 88_608), (64, 150_912)]}
PEOPLE = [25, 100]
# recall without the tool, distinct per arch so a mixed cell would show up as a new value
RECALL = {"llama": 0.8, "mamba": 0.5, "mamba2": 0.35, "hawk": 0.2}


def make_store(db_path: Path, archs: list[str]) -> None:
    """A completed sweep: one eval run per (arch, size, people) point, qa mode (no tool), the
    teacher evaluated; a llama run's params do not name its arch (a llama dump omits it), the
    sweep point does."""
    runs, params, evals, points = [], [], [], []
    start = pd.Timestamp("2026-12-03 08:00")
    combos = [(arch, size, people) for arch in archs
              for size, people in itertools.product(SIZES[arch], PEOPLE)]
    for i, (arch, (d_model, n_params), people) in enumerate(combos):
        point = f"p{i:02d}"
        overrides = {"teacher.model.arch": arch, "teacher.model.d_model": d_model,
                     "world.people": people}
        points.append(("a1", point, "completed", f"a1-{point}", 1, 100.0, None,
                       json.dumps(overrides)))
        run_id = f"sweeps/a1/{point}/eval"
        runs.append({"run_id": run_id, "stage": "eval", "name": "eval", "sweep": "a1",
                     "point": point, "status": "completed",
                     "started_at": start + pd.Timedelta(minutes=i)})
        resolved = {"world.people": people, "world.tool_dialogs": False, "world.qa_dialogs": True,
                    "teacher.model.d_model": d_model}
        if arch != "llama":
            resolved["teacher.model.arch"] = arch
        params += [(run_id, k, json.dumps(v)) for k, v in resolved.items()]
        recall = RECALL[arch] * d_model / SIZES[arch][-1][0] * 25 / people
        evals += [(run_id, "teacher", "parameters", "model", None, float(n_params), None, None),
                  (run_id, "teacher", "recall", "trained", None, recall, 60, None),
                  (run_id, "teacher", "knowledge_bits", "trained", None,
                   recall * people * 6 * 8, 60, None)]
    write_store(db_path, runs=runs, params=params, evals=evals, points=points)


def scaling_page(tmp_path: Path, archs: list[str]) -> tuple[str, pd.DataFrame]:
    db = tmp_path / "runs.duckdb"
    make_store(db, archs)
    src = Source.open(db)
    try:
        return scaling.build(src).html(), scaling_data.load(src)
    finally:
        src.close()


def rows_of(chart: dict[str, Any]) -> list[dict[str, Any]]:
    """Every inline data row of a spec."""
    return [row for rows in chart.get("datasets", {}).values() for row in rows]


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    return scaling_page(tmp_path_factory.mktemp("archs"), ["llama", "mamba", "mamba2", "hawk"])


def test_each_model_gets_its_arch_from_the_point_or_defaults_to_llama(several) -> None:
    _, models = several
    assert sorted(models.groupby("arch").size().items()) == [("hawk", 4), ("llama", 4),
                                                             ("mamba", 4), ("mamba2", 4)]
    assert scaling_data.archs_of(models) == ["llama", "mamba", "mamba2", "hawk"]


def test_one_accuracy_map_per_arch_never_averaged_across_archs(several) -> None:
    page, _ = several
    assert 'id="contours"' not in page                     # no shared map
    for arch in ("llama", "mamba", "mamba2", "hawk"):
        chart = spec(page, f"contours-{arch}")
        (panel,) = chart["hconcat"]                        # qa worlds only: the recall panel
        assert panel["title"] == f"{arch}: without the tool: recall, trained people"
        measured = [r for r in rows_of(chart) if "recall" in r]
        assert {r["arch"] for r in measured} == {arch}
        assert len(measured) == 4
        assert (f"<em>{arch}: without the tool: recall, trained people</em>: 4 models on a "
                "2 × 2 lattice") in page
    # the arch comparison's two (lmpipe/report/scaling_archs.py), the knowledge chart's, the map's
    assert page.count('<p class="howto">') == 4


def test_knowledge_chart_has_one_panel_per_arch_on_shared_axes(several) -> None:
    page, _ = several
    chart = spec(page, "knowledge")
    titles = [panel["title"] for panel in chart["hconcat"]]
    assert titles == [f"knowledge bits against parameters: {a}"
                      for a in ("llama", "mamba", "mamba2", "hawk")]
    assert chart["resolve"]["scale"]["x"] == "shared"


def test_per_model_labels_name_the_arch(tmp_path: Path) -> None:
    """Without a lattice (one size per arch) every model is a labelled point, arch in its label."""
    db = tmp_path / "runs.duckdb"
    make_store(db, ["llama", "hawk"])
    src = Source.open(db)
    try:
        models = scaling_data.load(src)
    finally:
        src.close()
    rows = scaling_models.model_rows(models[models["parameters"] < 100_000])
    assert {label.split(" (")[0] for label in rows["label"]} == {"teacher [llama]",
                                                                  "teacher [hawk]"}


def test_a_single_arch_draws_as_before(tmp_path: Path) -> None:
    page, models = scaling_page(tmp_path, ["llama"])
    assert set(models["arch"]) == {"llama"}
    chart = spec(page, "contours")
    assert chart["hconcat"][0]["title"] == "without the tool: recall, trained people"
    assert spec(page, "knowledge")["title"] == "knowledge bits against parameters"
    assert "[llama]" not in page
