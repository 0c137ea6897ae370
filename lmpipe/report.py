"""The HTML report: one self-contained page drawn from the run database with Altair.

`render_report(db_path, out_dir)` writes `out_dir/index.html` with
1. training curves (`loss`, and `val_loss` when logged) against step, one colour per run, and,
   when a run was evaluated at its checkpoints (lmpipe/checkpoint_eval.py), its tool accuracy on
   trained and held-out people against step;
2. the latest eval run side by side: recall without the tool and tool accuracy on trained and
   held-out people, per model (teacher, student, distilled, quantized, ...);
3. distillation: validation loss of the distilled student(s) against the scratch student at equal
   steps, and each distillation term's curve;
4. tables: every model's overall numbers (attribute = null) and the runs.
The Vega/Vega-Lite/vega-embed bundle is inlined once (from vl-convert), so the page renders
offline and can be mailed or archived as one file.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import altair as alt
import duckdb
import pandas as pd

MODEL_ORDER = ["teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"]
# (metric, split, panel label) for the eval comparison chart, in display order.
EVAL_PANELS = [
    ("recall", "trained", "recall, trained (no tool)"),
    ("tool_accuracy", "trained", "tool accuracy, trained"),
    ("tool_accuracy", "heldout", "tool accuracy, held-out"),
]
MAX_POINTS_PER_CURVE = 500

CURVES_SQL = f"""
WITH per_step AS (  -- a resumed run may log a step twice: average the duplicates
    SELECT run_id, name AS metric, step, avg(value) AS value
    FROM metrics
    WHERE name IN ('loss', 'val_loss') AND isfinite(value)
    GROUP BY ALL
), numbered AS (
    SELECT *, row_number() OVER (PARTITION BY run_id, metric ORDER BY step) - 1 AS i,
              count(*) OVER (PARTITION BY run_id, metric) AS n
    FROM per_step
)
SELECT run_id, metric, step, value FROM numbered  -- thin long curves to a readable size
WHERE i % greatest(1, ceil(n / {MAX_POINTS_PER_CURVE})::BIGINT) = 0 OR i = n - 1
ORDER BY run_id, metric, step
"""

# {stage_rows}: the eval stage's rows, not a training run's step-tagged eval series
LATEST_EVAL_RUN_SQL = """
SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM evals WHERE {stage_rows})
ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 1
"""

OVERALL_EVALS_SQL = """
SELECT model, metric, split, avg(value) AS value, max(n) AS n
FROM evals WHERE run_id = ? AND attribute IS NULL AND {stage_rows}
GROUP BY ALL ORDER BY metric, split, model
"""

STEP_ACCURACY_SQL = """
SELECT run_id, split, step, avg(value) AS value, max(n) AS n  -- a re-evaluated step: averaged
FROM evals
WHERE step IS NOT NULL AND metric = 'tool_accuracy' AND attribute IS NULL
  AND split IN ('trained', 'heldout') AND isfinite(value)
GROUP BY ALL ORDER BY run_id, split, step
"""

DISTILL_VAL_SQL = """
SELECT r.run_id, m.step, avg(m.value) AS val_loss
FROM metrics m JOIN runs r USING (run_id)
WHERE m.name = 'val_loss' AND isfinite(m.value)
  AND (r.stage = 'distill' OR (r.stage = 'train' AND r.name <> 'teacher'))
GROUP BY ALL ORDER BY step, run_id
"""

DISTILL_TERMS_SQL = """
SELECT r.run_id, m.name AS term, m.step, avg(m.value) AS value
FROM metrics m JOIN runs r USING (run_id)
WHERE r.stage = 'distill' AND m.name LIKE 'loss\\_%' ESCAPE '\\' AND isfinite(m.value)
GROUP BY ALL ORDER BY run_id, term, step
"""

RUNS_SQL = """
SELECT run_id, stage, name, status, started_at, wall_time_s, peak_rss_mb
FROM runs ORDER BY started_at NULLS LAST, run_id
"""


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {row[0] for row in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}


def _model_order(models: list[str]) -> list[str]:
    return [m for m in MODEL_ORDER if m in models] + sorted(set(models) - set(MODEL_ORDER))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def _duration(seconds: Any) -> str:
    if seconds is None or pd.isna(seconds):
        return "–"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:04.1f}s"
    return f"{secs:.1f}s"


def curves_chart(curves: pd.DataFrame) -> alt.TopLevelMixin:
    """One panel per curve metric (loss, val_loss): value against step, colour = run."""
    pick = alt.selection_point(fields=["run_id"], bind="legend")
    panels = []
    for metric in [m for m in ("loss", "val_loss") if m in set(curves["metric"])]:
        panels.append(
            alt.Chart(curves[curves["metric"] == metric], title=metric)
            .mark_line(point=metric == "val_loss")
            .encode(
                x=alt.X("step:Q", title="step"),
                # log scale: losses fall by orders of magnitude on memorization-style tasks
                y=alt.Y("value:Q", title=f"{metric} (log scale)", scale=alt.Scale(type="log")),
                color=alt.Color("run_id:N", title="run"),
                opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
                tooltip=["run_id:N", "step:Q", alt.Tooltip("value:Q", format=".4f")],
            )
            .properties(width=420, height=280)
        )
    panels[0] = panels[0].add_params(pick)  # defined once; the legend is shared by the panels
    return alt.hconcat(*panels) if len(panels) > 1 else panels[0]


def step_accuracy_chart(accuracy: pd.DataFrame) -> alt.TopLevelMixin:
    """Tool accuracy against step from checkpoint evals: colour = run, dash = people split."""
    pick = alt.selection_point(fields=["run_id"], bind="legend")
    return (alt.Chart(accuracy, title="tool accuracy during training")
            .mark_line(point=True)
            .encode(
                x=alt.X("step:Q", title="step"),
                y=alt.Y("value:Q", title="tool accuracy", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("run_id:N", title="run"),
                strokeDash=alt.StrokeDash("split:N", title="people", sort=["trained", "heldout"]),
                opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
                tooltip=["run_id:N", "split:N", "step:Q", alt.Tooltip("value:Q", format=".4f"),
                         "n:Q"],
            )
            .add_params(pick)
            .properties(width=420, height=280))


def distill_charts(val: pd.DataFrame, terms: pd.DataFrame) -> alt.TopLevelMixin:
    """Validation loss of scratch vs distilled students, and each distillation term, per step."""
    left = (alt.Chart(val, title="validation loss: scratch vs distilled")
            .mark_line(point=True)
            .encode(x=alt.X("step:Q"), y=alt.Y("val_loss:Q", title="val_loss (log scale)",
                                               scale=alt.Scale(type="log")),
                    color=alt.Color("run_id:N", title="run"),
                    tooltip=["run_id:N", "step:Q", alt.Tooltip("val_loss:Q", format=".5f")])
            .properties(width=420, height=280))
    if terms.empty:
        return left
    right = (alt.Chart(terms, title="distillation terms (per target, unweighted)")
             .mark_line()
             .encode(x=alt.X("step:Q"), y=alt.Y("value:Q", title="value (log scale)",
                                                scale=alt.Scale(type="log")),
                     color=alt.Color("term:N", title="term"), strokeDash=alt.StrokeDash("run_id:N"),
                     tooltip=["run_id:N", "term:N", "step:Q", alt.Tooltip("value:Q", format=".5f")])
             .properties(width=420, height=280))
    return alt.hconcat(left, right).resolve_scale(color="independent")


def _equal_steps_table(val: pd.DataFrame) -> pd.DataFrame:
    """step x run validation loss, on the steps every run logged."""
    wide = val.pivot_table(index="step", columns="run_id", values="val_loss", aggfunc="mean").dropna()
    wide = wide.map(lambda v: f"{v:.5f}").reset_index()
    wide.columns.name = None
    return wide


def evals_chart(overall: pd.DataFrame) -> alt.TopLevelMixin | None:
    """Grouped bars: one group per (metric, split) panel, one bar per model, value on top."""
    labels = {(metric, split): label for metric, split, label in EVAL_PANELS}
    data = overall.assign(panel=[labels.get((m, s)) for m, s in zip(overall["metric"], overall["split"])])
    data = data.dropna(subset=["panel"])
    if data.empty:
        return None
    models = _model_order(list(data["model"].unique()))
    base = alt.Chart(data).encode(
        x=alt.X("panel:N", title=None, sort=[label for *_, label in EVAL_PANELS],
                axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("model:N", sort=models),
        y=alt.Y("value:Q", title="accuracy"),
        color=alt.Color("model:N", sort=models, title="model"),
        tooltip=["model:N", "metric:N", "split:N", alt.Tooltip("value:Q", format=".4f"), "n:Q"],
    )
    bars = base.mark_bar()
    text = base.mark_text(dy=-6, fontSize=10).encode(text=alt.Text("value:Q", format=".3f"),
                                                     color=alt.value("#333"))
    return (bars + text).properties(width=max(480, 48 * len(models) * data["panel"].nunique()),
                                    height=300)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="–", escape=True, classes="numbers")


def _load(db_path: Path) -> dict[str, Any] | None:
    """Everything the page shows, or None when there is no database or no runs in it."""
    if not Path(db_path).is_file():
        return None
    with duckdb.connect(str(db_path), read_only=True) as con:
        if not {"runs", "metrics", "evals"} <= _tables(con):
            return None
        runs = con.execute(RUNS_SQL).df()
        if runs.empty:
            return None
        # a database indexed before evals had a step column has only eval-stage rows
        has_step = "step" in _columns(con, "evals")
        stage_rows = "step IS NULL" if has_step else "true"
        latest = con.execute(LATEST_EVAL_RUN_SQL.format(stage_rows=stage_rows)).fetchone()
        eval_run = latest[0] if latest else None
        overall = (con.execute(OVERALL_EVALS_SQL.format(stage_rows=stage_rows), [eval_run]).df()
                   if eval_run else pd.DataFrame(columns=["model", "metric", "split", "value", "n"]))
        step_accuracy = (con.execute(STEP_ACCURACY_SQL).df() if has_step
                         else pd.DataFrame(columns=["run_id", "split", "step", "value", "n"]))
        return {"runs": runs, "curves": con.execute(CURVES_SQL).df(),
                "step_accuracy": step_accuracy,
                "eval_run": eval_run, "overall": overall,
                "distill_val": con.execute(DISTILL_VAL_SQL).df(),
                "distill_terms": con.execute(DISTILL_TERMS_SQL).df()}


def _overall_table(overall: pd.DataFrame) -> pd.DataFrame:
    """model × 'metric / split' pivot of the overall numbers, formatted for reading."""
    column = overall["metric"] + overall["split"].map(lambda s: "" if s is None or pd.isna(s) else f" / {s}")
    wide = overall.assign(column=column).pivot_table(index="model", columns="column", values="value",
                                                     aggfunc="mean")
    first = [f"{metric} / {split}" for metric, split, _ in EVAL_PANELS if f"{metric} / {split}" in wide]
    wide = wide.reindex(index=_model_order(list(wide.index)),
                        columns=first + sorted(c for c in wide.columns if c not in first))
    wide = wide.map(_fmt).reset_index()
    wide.columns.name = None
    return wide


def _embed(div_id: str, chart: alt.TopLevelMixin) -> str:
    with alt.data_transformers.disable_max_rows():
        spec = json.dumps(chart.to_dict()).replace("</", "<\\/")
    return (f'<div id="{div_id}"></div>\n<script type="text/javascript">\n'
            f'vegaEmbed("#{div_id}", {spec}, {{"mode": "vega-lite"}}).catch(console.error);\n</script>')


def _vega_bundle() -> str:
    import vl_convert

    return vl_convert.javascript_bundle(vl_version="_".join(alt.SCHEMA_VERSION.split(".")[:2]))


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0; } .meta { color: #666; margin-top: .2rem; }
p.howto { color: #444; max-width: 60rem; }
table.numbers { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
table.numbers th, table.numbers td { padding: .25rem .7rem; border-bottom: 1px solid #ddd; text-align: right; }
table.numbers th:first-child, table.numbers td:first-child { text-align: left; }
"""


def _page(body: list[str], with_vega: bool) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    script = f'<script type="text/javascript">\n{_vega_bundle()}\n</script>' if with_vega else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>lmpipe report</title>", f"<style>{STYLE}</style>", script, "</head>", "<body>",
        "<h1>lmpipe report</h1>", f'<p class="meta">generated {now}</p>', *body, "</body>", "</html>",
    ])


def render_report(db_path: Path, out_dir: Path) -> Path:
    """Write `out_dir/index.html` from the run database at `db_path`; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _load(Path(db_path))
    body: list[str] = []
    charts = 0
    if data is None:
        body.append("<p>No runs yet: run a stage, then <code>lmpipe index</code>.</p>")
    else:
        body.append("<h2>Training curves</h2>")
        if data["curves"].empty:
            body.append("<p>No run has logged <code>loss</code> yet.</p>")
        else:
            body.append(_embed("curves", curves_chart(data["curves"])))
            charts += 1
            body.append('<p class="howto">Loss against optimizer step, one colour per run; the '
                        "right panel (when present) is the validation loss. Lower is better. Click a "
                        "run in the legend to highlight it; hover a line for exact values. The y axis is "
                        "logarithmic.</p>")
        if not data["step_accuracy"].empty:
            body.append("<h3>Tool accuracy against step</h3>")
            body.append(_embed("step_accuracy", step_accuracy_chart(data["step_accuracy"])))
            charts += 1
            body.append('<p class="howto">Each training run\'s checkpoints, evaluated while it '
                        "trained: the share of questions about trained (solid) and held-out "
                        "(dashed) people answered exactly by querying the database tool, against "
                        "the checkpoint's step, on the same sample of people at every step. Higher "
                        "is better; held-out people can only be answered through the tool.</p>")

        body.append("<h2>Evaluation</h2>")
        eval_run, overall = data["eval_run"], data["overall"]
        if eval_run is None:
            body.append("<p>No eval run yet.</p>")
        else:
            body.append(f"<p>From eval run <code>{html.escape(eval_run)}</code> (the latest with "
                        "evals), over all attributes.</p>")
            chart = evals_chart(overall)
            if chart is None:
                body.append("<p>This eval run has no overall recall or tool accuracy rows.</p>")
            else:
                body.append(_embed("evals", chart))
                charts += 1
                body.append('<p class="howto">Each group is one measure, each bar one model. '
                            "<em>recall, trained</em> answers from the weights alone (no tool); "
                            "<em>tool accuracy</em> answers by querying the database tool, on people "
                            "seen in training and on held-out people. Higher is better; the gap "
                            "between the first group and the others is what the tool adds.</p>")
            if not overall.empty:
                body.append("<h3>Overall numbers per model</h3>")
                body.append(_table(_overall_table(overall)))

        val = data["distill_val"]
        if not val.empty and val["run_id"].isin(data["runs"].query("stage == 'distill'")["run_id"]).any():
            body.append("<h2>Distillation</h2>")
            body.append(_embed("distill", distill_charts(val, data["distill_terms"])))
            charts += 1
            body.append('<p class="howto">Left: validation loss of the students trained from '
                        "scratch and distilled from the teacher, same architecture; at equal steps, "
                        "lower is better. Right: each term of the distillation objective as logged "
                        "(per target token, before its weight). The table gives the validation loss "
                        "at the steps every run evaluated.</p>")
            body.append(_table(_equal_steps_table(val)))

        runs = data["runs"].assign(
            started_at=data["runs"]["started_at"].map(lambda t: "–" if pd.isna(t) else f"{t:%Y-%m-%d %H:%M}"),
            wall_time_s=data["runs"]["wall_time_s"].map(_duration),
            peak_rss_mb=data["runs"]["peak_rss_mb"].map(lambda v: "–" if pd.isna(v) else f"{v:,.0f}"),
        ).rename(columns={"started_at": "started (UTC)", "wall_time_s": "wall time",
                          "peak_rss_mb": "peak RSS (MiB)"})
        body.append("<h2>Runs</h2>")
        body.append(_table(runs))
    out = out_dir / "index.html"
    out.write_text(_page(body, with_vega=charts > 0), encoding="utf-8")
    return out
