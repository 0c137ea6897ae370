"""Reports one would put in a paper: on a store shaped like the default run (a teacher, a scratch
student, and at the student's size the distilled, QAT, PTQ and int8 models, PTQ destroyed) and on
a sweep's lattice, every chart of every page renders to PNG offline (vl-convert), every axis says
what it measures and in what unit, and the figures are the models' own, never averaged across
different models."""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lmpipe.report.page import VL_VERSION
from lmpipe.report.render import render_report
from lmpipe.store.index import index_runs
from tests.report.test_report_sweep import html_table, inline_rows, make_store, spec
from tests.run_folders import write

PAGES = ["index", "curves", "scaling", "distillation", "probes"]
CATEGORICAL = {"model"}   # axes of categories, not measures: no unit
TEACHER, STUDENT = 148_352, 86_688
PEOPLE = 1000
# model -> (tool accuracy trained, held-out, recall, val_loss, weight bytes, knowledge bits)
MODELS = {
    "teacher": (0.9912, 0.9705, 0.3125, 1.2043, 593_408, 25_000.0),
    "student": (0.8433, 0.8012, 0.0625, 1.5120, 346_752, 9_000.0),
    "distilled": (0.9051, 0.8844, 0.0938, 1.4011, 346_752, 11_000.0),
    "quantized": (0.8702, 0.8511, 0.0712, 1.4677, 21_672, 10_000.0),
    "quantized_ptq": (0.0000, 0.0000, 0.0000, 9.1200, 21_672, 0.0),
    "int8": (0.9040, 0.8830, 0.0930, 1.4020, 86_688, 10_900.0),
}
PARAMS = {"teacher": TEACHER, **{m: STUDENT for m in MODELS if m != "teacher"}}


def summary(stage: str, name: str, hour: int) -> dict[str, Any]:
    return {"stage": stage, "name": name, "status": "completed",
            "started_at": f"2026-11-23T{hour:02d}:00:00+00:00",
            "ended_at": f"2026-11-23T{hour:02d}:20:00+00:00", "wall_time_s": 1200.0,
            "peak_rss_mb": 700.0}


def default_run(root: Path) -> None:
    """Run folders as the default pipeline writes them (training metrics, eval rows)."""
    world = {"world": {"people": PEOPLE, "tool_dialogs": True, "qa_dialogs": True}}
    runs = [("teacher", "train", "teacher"), ("student", "train", "student"),
            ("distill", "distill", "distilled"), ("quantize", "quantize", "quantized")]
    for hour, (folder, stage, name) in enumerate(runs, start=8):
        write(root / folder / "params.json", world)
        write(root / folder / "summary.json", summary(stage, name, hour))
        rows = []
        for step in range(10, 210, 10):
            ce = 1.2 + 3.0 * 10 / step
            row = {"step": step, "tokens": step * 4096, "lr": 0.003, "grad_norm": 1.0}
            if stage == "train":
                row["loss"] = ce
            else:  # distillation (QAT too): the objective, and its terms
                row.update({"loss": 0.4 * ce, "loss_forward_kl": 0.3 * ce, "loss_ce": ce})
            if step % 50 == 0:
                row["val_loss"] = ce + 0.1
                if stage == "train":  # the train stage's eval hook: no held-out people
                    row.update({"recall": step / 400, "tool_accuracy": step / 210})
            rows.append(row)
        write(root / folder / "metrics.jsonl", rows)
    write(root / "eval" / "params.json", world)
    write(root / "eval" / "summary.json", summary("eval", "eval", 13))
    evals = []
    for model, (tool, held, recall, val, wbytes, bits) in MODELS.items():
        for metric, split, value in [
                ("tool_accuracy", "trained", tool), ("tool_accuracy", "heldout", held),
                ("recall", "trained", recall), ("val_loss", "val", val),
                ("val_ppl", "val", 2.718281828 ** val), ("val_bpb", "val", val / 0.69 / 3.1),
                ("knowledge_bits", "trained", bits), ("parameters", "model", float(PARAMS[model])),
                ("weight_bytes", "model", float(wbytes)),
                ("file_bytes", "model", float(wbytes + 40_000))]:
            evals.append({"model": model, "metric": metric, "split": split, "attribute": None,
                          "value": value, "n": 200})
    write(root / "eval" / "evals.jsonl", evals)


def render(db: Path, out: Path) -> dict[str, str]:
    render_report(db, out)
    return {name: (out / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}


@pytest.fixture(scope="module")
def default_html(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("default") / "runs"
    default_run(root)
    index_runs(root, root.parent / "runs.duckdb")
    return render(root.parent / "runs.duckdb", root.parent / "report")


@pytest.fixture(scope="module")
def sweep_html(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    db = tmp_path_factory.mktemp("sweep") / "runs.duckdb"
    make_store(db, steps=12)
    return render(db, db.parent / "report")


def charts(page: str) -> dict[str, dict[str, Any]]:
    """Every Vega-Lite spec a page embeds, by its div id."""
    ids = re.findall(r'vegaEmbed\("#([a-z_]+)"', page)
    return {div: spec(page, div) for div in ids}


def axis_titles(svg: str) -> list[str]:
    """The axis titles Vega drew in an SVG."""
    titles = []
    for group in re.findall(r'<g class="mark-text role-axis-title"[^>]*>(.*?)</g>', svg, re.S):
        titles += [htmllib.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", group)]
    return titles


def test_every_chart_renders_to_png_offline_with_titled_axes(default_html, sweep_html) -> None:
    import vl_convert

    drawn = 0
    for store, pages in (("default", default_html), ("sweep", sweep_html)):
        for name, page in pages.items():
            # nothing is fetched: no script, style or image from the network
            assert re.search(r'(src|href)="(https?:)?//', page) is None, (store, name)
            for div, chart in charts(page).items():
                assert '"url"' not in json.dumps(chart), (store, name, div)   # data inlined
                png = vl_convert.vegalite_to_png(chart, vl_version=VL_VERSION)
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000, (name, div)
                svg = vl_convert.vegalite_to_svg(chart, vl_version=VL_VERSION)
                titles = axis_titles(svg)
                assert titles, (store, name, div)
                for title in titles:
                    # every measured axis names its metric and unit, "what (unit)", never a bare
                    # field name; a categorical axis names its categories
                    assert title in CATEGORICAL or (
                        "(" in title and title.endswith(")")), (store, name, div, title)
                    assert not title.startswith("value"), (store, name, div, title)
                drawn += 1
    assert drawn >= 10


def test_default_run_scaling_page_has_one_labelled_point_per_model(default_html) -> None:
    scaling = default_html["scaling"]
    assert 'vegaEmbed("#contours"' not in scaling        # no lattice: no map averaging models
    chart = spec(scaling, "models")
    tool, recall = chart["hconcat"]
    assert tool["title"].startswith("with the tool") and recall["title"].startswith("without")
    rows = {r["model"]: r for r in chart["datasets"][tool["data"]["name"]]}
    assert set(rows) == set(MODELS)                        # one point per model ...
    for model, figures in MODELS.items():                  # ... with its own value
        assert rows[model]["value"] == pytest.approx(figures[0])
        assert rows[model]["text"] == f"{figures[0]:.3f}" and rows[model]["n"] == 1
    assert rows["distilled"]["label"] == f"distilled ({STUDENT:,} params)"
    mean = sum(MODELS[m][0] for m in MODELS if m != "teacher") / 5
    assert f"{mean:.3f}" not in scaling                    # the averaged cell is gone
    knowledge = spec(scaling, "knowledge")
    names = next(layer for layer in knowledge["layer"] if layer["mark"]["type"] == "text"
                 and layer["encoding"].get("text", {}).get("field") == "text")
    # one label per size, its models top to bottom: those of one size do not overprint
    labels = {r["parameters"]: r["text"] for r in knowledge["datasets"][names["data"]["name"]]}
    assert labels == {TEACHER: "teacher: 25,000",
                      STUDENT: "distilled: 11,000\nint8: 10,900\nquantized: 10,000\nstudent: 9,000"}
    assert names["encoding"]["y"]["title"] == "knowledge in the weights (bits, log scale)"


def test_distillation_sets_the_destroyed_model_apart_and_tables_fit(default_html) -> None:
    dist = default_html["distillation"]
    chart = spec(dist, "evals")
    panels = {p["title"]: p for p in chart["concat"]}

    def models_in(panel: str) -> set[str]:
        return {r["model"] for r in chart["datasets"][panels[panel]["data"]["name"]]}

    for panel in ("val_loss / val", "val_ppl / val", "val_bpb / val"):
        assert models_in(panel) == set(MODELS) - {"quantized_ptq"}, panel
    assert models_in("tool_accuracy / trained") == set(MODELS)   # its zero accuracy is drawn
    assert "Set apart from the loss" in dist and "<em>quantized_ptq</em> (9.12 nats/token)" in dist
    y = panels["val_loss / val"]["layer"][0]["encoding"]["y"]
    assert y["title"] == "validation cross-entropy (nats/token)"
    sizes = panels["weight_bytes / model"]["layer"][0]["encoding"]["y"]
    assert sizes["scale"]["type"] == "log" and "bytes, log scale" in sizes["title"]

    start = dist.index("<h3>Overall numbers per model</h3>")
    table = html_table(dist[start:dist.index("</table>", start)]).set_index("measure")
    assert list(table.columns) == ["unit", *MODELS]          # a row per measure: fits the page
    assert table.loc["parameters / model", "teacher"] == "148,352"     # integers as integers
    assert table.loc["parameters / model", "distilled"] == "86,688"
    assert table.loc["weight_bytes / model", "quantized"] == "21,672"
    assert table.loc["val_loss / val", "quantized_ptq"] == "9.1200"
    assert table.loc["val_loss / val", "unit"] == "nats/token"
    assert ".00<" not in dist                                  # no "148,352.00"
    # estimated width: ~7 px a character and 22 px of padding per column, in a 1168 px column
    width = sum(7 * max(len(str(c)), *(len(str(v)) for v in table.reset_index()[c])) + 22
                for c in table.reset_index().columns)
    assert width < 1168, width


def test_curves_keep_objectives_apart_from_cross_entropy(default_html) -> None:
    import vl_convert

    curves = default_html["curves"]
    chart = spec(curves, "curves")
    metric = next(p for p in chart["params"] if p["name"] == "metric")
    labels = metric["bind"]["labels"]
    assert labels[:4] == ["loss", "val_loss", "distill objective", "qat objective"]
    runs = {row["r"]: row["run"] for row in chart["datasets"][
        chart["hconcat"][0]["layer"][0]["transform"][3]["from"]["data"]["name"]]}
    rows = inline_rows(chart)
    loss_runs = {runs[int(r["r"])] for r in rows if labels[int(r["m"])] == "loss"}
    assert loss_runs == {"teacher", "student"}                # cross-entropy only
    assert {runs[int(r["r"])] for r in rows if labels[int(r["m"])] == "distill objective"} == \
        {"distill"}
    svg = vl_convert.vegalite_to_svg(chart, vl_version=VL_VERSION)
    assert "training cross-entropy (nats/token, log scale)" in svg   # the y axis, for "loss"
    assert ">value<" not in svg
    tool_text = curves[curves.index('vegaEmbed("#step_accuracy"'):]
    assert "<em>recall</em> answers" in tool_text and "<em>tool_accuracy</em> answers" in tool_text
    assert "held-out" not in tool_text                        # no held-out line is drawn


def test_tool_text_describes_only_the_lines_drawn(sweep_html, default_html) -> None:
    curves = sweep_html["curves"]
    text = curves[curves.index('vegaEmbed("#step_accuracy"'):]
    assert "tool_accuracy (held-out)</em> asks about people" in text   # the line is drawn
    assert spec(curves, "step_accuracy")["encoding"]["y"]["title"] == "accuracy (fraction correct)"


def test_index_opens_with_a_headline_of_the_key_comparisons(default_html, sweep_html) -> None:
    index = default_html["index"]
    body = index[index.index("<body>"):]
    assert body.index("<h2>Headline</h2>") < body.index("<h2>Reports</h2>")
    headline = htmllib.unescape(re.sub(r"<[^>]+>", "", body[:body.index("<h2>Reports</h2>")]))
    assert ("Teacher (148,352 parameters): tool accuracy 0.991 on trained people and 0.971 on "
            "held-out people; recall without the tool 0.312") in headline
    assert ("validation loss 1.401 nats/token for the distilled student against 1.512 for the "
            "same 86,688-parameter model trained from scratch (-0.111)") in headline
    assert "Ternary QAT (quantized): validation loss 1.468 (+0.067 against the distilled " \
           "model), weights in 21,672 bytes (6.2% of the distilled model's)" in headline
    assert "(quantized_ptq): validation loss 9.120 (+7.719" in headline
    # held-out people first: only the tool answers about them; QAT's share of its float twin
    assert ("tool accuracy 0.884 against 0.801 on held-out people (trained people: 0.905 against "
            "0.843).") in headline
    assert ("tool accuracy 0.851 on held-out people (96.2% of the distilled model's), 0.870 on "
            "trained people.") in headline
    assert "tool accuracy 0.000 on held-out people (0.0% of the distilled model's)" in headline
    assert headline.count("destroyed") == 1                       # PTQ only
    sweep = htmllib.unescape(re.sub(r"<[^>]+>", "", sweep_html["index"]))
    # the lattice sweep: 9 tool models at 0.95; 8 models without the tool
    assert "Sweep s1 (" in sweep and "with the tool, tool accuracy 0.950 over the 9 models" in sweep


def test_sweep_lattice_still_maps_the_sweep_models(sweep_html) -> None:
    scaling = sweep_html["scaling"]
    assert 'vegaEmbed("#contours"' in scaling
    assert "drawn from the <em>model</em> models only" in scaling
    # the pipeline's models at one size are not averaged into the map: they get their own points
    rows = spec(scaling, "models")
    data = [r for rows_ in rows["datasets"].values() for r in rows_ if "label" in r]
    assert {r["model"] for r in data} == {"teacher", "student", "distilled", "quantized"}
    assert [r["value"] for r in data if r["model"] == "teacher"
            and r["panel"].startswith("with the tool")] == [pytest.approx(0.9876)]


def test_replicates_keep_their_spread_in_the_headline_and_the_model_points(tmp_path: Path) -> None:
    from tests.store import test_spread as seeded

    root = tmp_path / "runs"
    seeded.write_sweep(root, "pipe-3c4d", [{}], start=0, models=seeded.MODELS,
                       evals=seeded.pipeline_evals, loss=lambda c, seed, s: 2.0 + 10 / s)
    index_runs(root, tmp_path / "db.duckdb")
    pages = render(tmp_path / "db.duckdb", tmp_path / "out")
    trained = [seeded.held_out(0, s) + 0.01 for s in seeded.SEEDS]     # the teacher's, per seed
    spread = f"{sum(trained) / 3:.3f} ({min(trained):.3f}–{max(trained):.3f})"
    headline = htmllib.unescape(re.sub(r"<[^>]+>", "", pages["index"]))
    assert "over the 3 replicates of eval run pipe-3c4d/p00/eval" in headline
    assert f"Teacher (5,000 parameters): tool accuracy {spread} on trained people" in headline
    chart = spec(pages["scaling"], "models")
    rows = [r for rows in chart["datasets"].values() for r in rows if "label" in r]
    teacher = next(r for r in rows if r["model"] == "teacher")
    assert (teacher["n"], teacher["text"]) == (3, spread)      # one point: the mean, min–max
    assert teacher["lo"] == pytest.approx(min(trained)) and len(rows) == len(seeded.MODELS)
