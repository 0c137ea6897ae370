"""distillation.html: teacher vs scratch student vs distilled vs quantized, per metric, and the
distillation runs' curves.

The comparison comes from one eval run: the latest whose eval-stage rows (step null) include the
pipeline's models (teacher, student = scratch, distilled, quantized, quantized_ptq, int8), else the
latest outside a sweep; its overall rows (attribute null) become one small bar chart per metric and
split, each y axis titled with the metric and its unit (sizes and losses spanning a decade are
dots on a log axis), and a measure × model table (a row per measure, so it fits the page; counts
print as integers). A model whose validation loss is over twice the models' median (ternary PTQ of
a small model) is destroyed: it is left out of the loss panels, with a note, and kept in the
accuracy panels and the table. When that run has replicates (the default experiment
swept with `seeds`, lmpipe/sweep/grid.py), the comparison is over all of them: each bar is the mean
with a whisker from the lowest to the highest replicate, each table cell "mean (min–max)",
aggregated in SQL (lmpipe/store/spread.py). The curves are the validation loss of the distilled
and scratch students at equal steps, and each logged distillation term (`loss_<term>`).
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from lmpipe.report import units
from lmpipe.report.conversations import turn_chart, turn_rows
from lmpipe.report.curves import thinned
from lmpipe.report.page import NO_RUNS, Page, esc, fmt, fmt_count, fmt_spread, howto, note, table
from lmpipe.report.source import Source
from lmpipe.store.spread import spread_sql

MODEL_ORDER = ["teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"]
FIRST_PANELS = ["recall / trained", "tool_accuracy / trained", "tool_accuracy / heldout",
                "val_loss / val", "val_ppl / val", "val_bpb / val", "knowledge_bits / trained",
                "bits_per_param / trained", "parameters / model", "weight_bytes / model",
                "file_bytes / model"]
ACCURACY_PANELS = FIRST_PANELS[:3]
LOSS_METRICS = {"val_loss", "val_ppl", "val_bpb"}
LOG_METRICS = LOSS_METRICS | {"parameters", "weight_bytes", "file_bytes"}
# a model whose validation loss is more than this times the median of the models' is destroyed
# (ternary PTQ of a small model: ~9 nats/token where the others have ~1.5); drawn with the rest,
# it would flatten every other bar of the loss panels
DESTROYED_RATIO = 2.0

LATEST_EVAL_RUN_SQL = """
WITH e AS (
    SELECT run_id, count(DISTINCT model) FILTER (WHERE model IN ({models})) AS known
    FROM evals WHERE {stage_rows} GROUP BY run_id
)
SELECT run_id FROM e JOIN runs USING (run_id)
WHERE known > 0 OR {not_in_sweep}  -- a sweep's eval runs (one model each) belong to scaling.html
ORDER BY known > 0 DESC, started_at DESC NULLS LAST, run_id DESC LIMIT 1
"""

# the overall rows of every replicate of the eval run's group (a group of one without seeds),
# each run's rows averaged first; spread_sql adds value_min, value_max and value_n (replicates)
OVERALL_RUN_ROWS = """
SELECT run_id, model, metric, split, avg(value) AS value, max(n) AS n
FROM evals WHERE run_id IN (SELECT run_id FROM ({groups}) WHERE group_id = ?)
  AND attribute IS NULL AND {stage_rows}
GROUP BY ALL
"""

# the students: distilled runs and from-scratch training runs other than the teacher
STUDENTS = ("(r.stage = 'distill' OR (r.stage = 'train' AND coalesce(r.name, '') <> 'teacher')) "
            "AND {not_in_sweep}")

DISTILL_VAL_SQL = """
SELECT r.run_id, m.step, avg(m.value) AS val_loss
FROM metrics m JOIN runs r USING (run_id)
WHERE m.name = 'val_loss' AND isfinite(m.value) AND {students}
GROUP BY ALL ORDER BY step, run_id
"""

DISTILL_TERMS_ROWS = """
SELECT m.run_id, m.name AS metric, m.step, avg(m.value) AS value
FROM metrics m JOIN runs r USING (run_id)
WHERE r.stage = 'distill' AND {not_in_sweep} AND m.name LIKE 'loss\\_%' ESCAPE '\\'
  AND isfinite(m.value)
GROUP BY ALL
"""


def model_order(models: list[str]) -> list[str]:
    return [m for m in MODEL_ORDER if m in models] + sorted(set(models) - set(MODEL_ORDER))


def _panel(metric: str, split: object) -> str:
    return metric if split is None or pd.isna(split) else f"{metric} / {split}"


def _bar_label(value: float) -> str:
    if not math.isfinite(value):
        return ""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    if abs(value) >= 10:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return f"{value:.3f}"


def overall_spread(src: Source, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(model, metric, split, value, value_min, value_max, value_n, n) over the replicates of
    `run_id`'s group, and the group's runs (run_id, seed)."""
    groups = src.run_groups_sql()
    group = src.scalar(f"SELECT group_id FROM ({groups}) WHERE run_id = ?", [run_id])
    rows = OVERALL_RUN_ROWS.format(groups=groups, stage_rows=src.stage_rows())
    overall = src.df(spread_sql(rows, ["model", "metric", "split"], ["value", "n"])
                     + " ORDER BY metric, split, model", [group])
    overall = overall.drop(columns=["n_min", "n_max", "n_n"])
    members = src.df(f"SELECT run_id, seed FROM ({groups}) WHERE group_id = ? "
                     "ORDER BY seed, run_id", [group])
    return overall, members


def destroyed(overall: pd.DataFrame) -> dict[str, float]:
    """model -> validation loss of the models quantization destroyed: more than DESTROYED_RATIO
    times the median validation loss of all the models (mean over replicates)."""
    val = overall[(overall["metric"] == "val_loss") & overall["value"].notna()]
    if len(val) < 3:  # too few models to say what is normal
        return {}
    median = float(val["value"].median())
    return {m: float(v) for m, v in zip(val["model"], val["value"])
            if median > 0 and v > DESTROYED_RATIO * median}


def _log_scale(metric: str, values: pd.Series) -> bool:
    """Whether a panel reads better on a log axis: a size or loss spanning a decade or more."""
    values = values.dropna()
    return (metric in LOG_METRICS and len(values) > 1 and bool((values > 0).all())
            and values.max() / values.min() >= 10)


def panel_chart(rows: pd.DataFrame, panel: str, models: list[str], spread: bool) -> alt.LayerChart:
    """One measure's bars, one per model, the value on top (over replicates: the mean with a
    whisker from the lowest to the highest), the y axis titled with the metric and its unit."""
    metric = rows["metric"].iloc[0]
    accuracy = panel in ACCURACY_PANELS or metric.endswith("accuracy")
    log = _log_scale(metric, rows["value_min"] if spread else rows["value"])
    scale = (alt.Scale(domain=[0, 1]) if accuracy else
             alt.Scale(type="log") if log else alt.Scale(zero=True))
    y_title = units.title(metric, log=log)
    base = alt.Chart().encode(
        x=alt.X("model:N", sort=models, title="model", axis=alt.Axis(labelAngle=-40)),
        color=alt.Color("model:N", sort=models, title="model"))
    tooltip = ["model:N", "metric:N", "split:N",
               alt.Tooltip("value:Q", title="mean" if spread else "value", format=",.5~g")]
    if spread:
        tooltip += [alt.Tooltip("value_min:Q", title="min", format=",.5~g"),
                    alt.Tooltip("value_max:Q", title="max", format=",.5~g"),
                    alt.Tooltip("value_n:Q", title="replicates")]
    # Vega-Lite draws no bars on a log axis (they have no zero to start from): dots there
    mark = base.mark_point(filled=True, size=70, opacity=1) if log else base.mark_bar()
    bars = mark.encode(y=alt.Y("value:Q", title=y_title, scale=scale), tooltip=tooltip)
    layers = [bars]
    if spread:
        layers.append(base.mark_rule(color="#222", strokeWidth=1.5).encode(
            y=alt.Y("value_min:Q", scale=scale), y2="value_max:Q", tooltip=tooltip))
    top = "value_max" if spread else "value"  # the label sits above the whisker
    layers.append(base.mark_text(dy=-10 if log else -5, fontSize=9, color="#333").encode(
        y=alt.Y(f"{top}:Q", scale=scale), text="text:N"))
    return alt.layer(*layers, data=rows).properties(
        width=max(120, 26 * len(models)), height=150, title=panel)


def comparison_chart(overall: pd.DataFrame, apart: dict[str, float] | None = None
                     ) -> alt.ConcatChart:
    """One small bar chart per measure (its own y axis, titled with the unit; a log axis where a
    size or loss spans a decade), one bar per model; the models in `apart` are left out of the
    loss panels, where they would flatten every other bar (the page says so in a note)."""
    apart = apart or {}
    data = overall.assign(panel=[_panel(m, s) for m, s in zip(overall["metric"], overall["split"])],
                          text=overall["value"].map(_bar_label))
    spread = "value_n" in data and bool((data["value_n"] > 1).any())
    if not spread:
        data = data.drop(columns=[c for c in ("value_min", "value_max", "value_n") if c in data])
    panels = [p for p in FIRST_PANELS if p in set(data["panel"])] + sorted(
        set(data["panel"]) - set(FIRST_PANELS))
    models = model_order(list(data["model"].unique()))
    charts = []
    for panel in panels:
        rows = data[data["panel"] == panel]
        if rows["metric"].iloc[0] in LOSS_METRICS:
            rows = rows[~rows["model"].isin(apart)]
        if not rows.empty:
            charts.append(panel_chart(rows, panel, models, spread))
    return alt.concat(*charts, columns=4).resolve_scale(color="shared")


def overall_table(overall: pd.DataFrame) -> pd.DataFrame:
    """'metric / split' × model table of the overall numbers (a row per measure, so six models
    fit the page however many measures there are), with each measure's unit; counts print as
    integers; over replicates, 'mean (min–max)'."""
    column = [_panel(m, s) for m, s in zip(overall["metric"], overall["split"])]
    if "value_n" not in overall:
        overall = overall.assign(value_min=overall["value"], value_max=overall["value"],
                                 value_n=1)
    cells = [fmt_spread(v, lo, hi, n, fmt_count if m in units.INTEGER_METRICS else fmt)
             for m, v, lo, hi, n in zip(overall["metric"], overall["value"],
                                        overall["value_min"], overall["value_max"],
                                        overall["value_n"])]
    wide = overall.assign(measure=column, cell=cells).pivot(index="measure", columns="model",
                                                            values="cell")
    metric_of = dict(zip(column, overall["metric"]))
    rows = [p for p in FIRST_PANELS if p in wide.index] + sorted(
        p for p in wide.index if p not in FIRST_PANELS)
    wide = wide.reindex(index=rows, columns=model_order(list(wide.columns))).fillna("–")
    wide.insert(0, "unit", [units.unit(metric_of[p]) for p in wide.index])
    wide = wide.reset_index()
    wide.columns.name = None
    return wide


def distill_chart(val: pd.DataFrame, terms: pd.DataFrame) -> alt.TopLevelMixin:
    """Validation loss of scratch vs distilled students, and each distillation term, per step."""
    left = (alt.Chart(val, title="validation loss: scratch vs distilled")
            .mark_line(point=True)
            .encode(x=alt.X("step:Q", title="optimizer step (count)"),
                    y=alt.Y("val_loss:Q", title=units.title("val_loss", log=True),
                            scale=alt.Scale(type="log")),
                    color=alt.Color("run_id:N", title="run"),
                    tooltip=["run_id:N", "step:Q", alt.Tooltip("val_loss:Q", format=".5f")])
            .properties(width=420, height=280))
    if terms.empty:
        return left
    right = (alt.Chart(terms.rename(columns={"metric": "term"}),
                       title="distillation terms (per target, unweighted)")
             .mark_line()
             .encode(x=alt.X("step:Q", title="optimizer step (count)"),
                     y=alt.Y("value:Q", title="distillation term (per target token, unweighted, "
                                              "log scale)", scale=alt.Scale(type="log")),
                     color=alt.Color("term:N", title="term"),
                     strokeDash=alt.StrokeDash("run_id:N", title="run"),
                     tooltip=["run_id:N", "term:N", "step:Q", alt.Tooltip("value:Q", format=".5f")])
             .properties(width=420, height=280))
    return alt.hconcat(left, right).resolve_scale(color="independent")


def equal_steps_table(val: pd.DataFrame) -> pd.DataFrame:
    """step × run validation loss, on the steps every run logged."""
    wide = val.pivot_table(index="step", columns="run_id", values="val_loss",
                           aggfunc="mean").dropna()
    wide = wide.map(lambda v: f"{v:.5f}").reset_index()
    wide.columns.name = None
    return wide


def build(src: Source) -> Page:
    page = Page("distillation", "distillation")
    if src.empty:
        page.add(NO_RUNS)
        return page
    page.add("<h2>Teacher vs scratch vs distilled vs quantized</h2>")
    models = ", ".join(f"'{m}'" for m in MODEL_ORDER)
    latest = src.scalar(LATEST_EVAL_RUN_SQL.format(models=models, stage_rows=src.stage_rows(),
                                                   not_in_sweep=src.not_in_sweep()))
    if latest is None:
        page.add("<p>No eval run yet.</p>" if not src.scalar(
            f"SELECT count(*) FROM evals WHERE {src.stage_rows()}") else
            "<p>No eval run of the pipeline's models yet (the sweeps' eval runs are on the "
            '<a href="scaling.html">scaling page</a> and in the sweep table of the '
            '<a href="index.html">index</a>).</p>')
    else:
        overall, members = overall_spread(src, latest)
        if len(members) > 1:
            seeds = ", ".join(str(int(s)) for s in members["seed"].dropna())
            group = src.scalar(f"SELECT group_id FROM ({src.run_groups_sql()}) WHERE run_id = ?",
                               [latest])
            page.add(f"<p>From the {len(members)} replicates of eval run <code>{esc(group)}</code>"
                     + (f" (seeds {esc(seeds)})" if seeds else "") +
                     ", the latest with the pipeline's models, over all attributes: each bar and "
                     "cell is the mean over the replicates; the whiskers and the brackets give the "
                     "lowest and the highest replicate.</p>")
        else:
            page.add(f"<p>From eval run <code>{esc(latest)}</code> (the latest with the "
                     "pipeline's models), over all attributes.</p>")
        if overall.empty:
            page.add("<p>This eval run has no overall rows.</p>")
        else:
            apart = destroyed(overall)
            page.chart("evals", comparison_chart(overall, apart))
            if apart:
                median = float(overall.loc[overall["metric"] == "val_loss", "value"].median())
                names = ", ".join(f"<em>{esc(m)}</em> ({v:.2f} nats/token)"
                                  for m, v in apart.items())
                page.add(note(
                    f"Set apart from the loss, perplexity and bits-per-byte panels: {names}, a "
                    f"validation loss over {DESTROYED_RATIO:g}× the models' median "
                    f"({median:.2f} nats/token), i.e. destroyed by quantization; drawn with the "
                    "others it would flatten their bars. Its figures are in the table below and "
                    "its accuracy bars are drawn."))
            page.add(howto(
                "One panel per measure (its own y axis, titled with the unit; sizes and losses "
                "that span a decade or more on a log axis), one bar per model: the teacher, the "
                "student trained from scratch (<em>student</em>), the same architecture distilled "
                "from the teacher (<em>distilled</em>), and its quantized versions (ternary QAT "
                "<em>quantized</em>, ternary post-training <em>quantized_ptq</em>, weight-only "
                "<em>int8</em>). <em>recall / trained</em> answers from the weights alone (no "
                "tool); <em>tool_accuracy</em> answers by querying the database tool, on people "
                "seen in training and on held-out people: higher is better, and the gap between "
                "recall and tool accuracy is what the tool adds. Losses, perplexity and bits per "
                "byte: lower is better; weight and file bytes show what quantization saves."))
            page.add("<h3>Overall numbers per model</h3>", table(overall_table(overall)))
        turns = turn_rows(src, list(members["run_id"]))
        if not turns.empty:
            page.add("<h3>Accuracy as a conversation grows</h3>")
            page.chart("conversation_turns", turn_chart(turns, model_order(
                list(turns["model"].unique()))))
            page.add(howto(
                "The eval's conversation trees (<code>eval.conversations</code>): each person's "
                "questions asked one after another in one dialog, the model's earlier queries, "
                "replies and answers in context, plus branches that fork after a turn and ask "
                "about someone else. Exact-match accuracy with the tool at each turn (branches at "
                "their depth); a flat line holds up as the conversation grows."
                + (" Bands: the lowest to the highest replicate." if len(members) > 1 else "")))

    page.add("<h2>Distillation</h2>")
    students = STUDENTS.format(not_in_sweep=src.not_in_sweep("r"))
    val = src.df(DISTILL_VAL_SQL.format(students=students))
    distill_runs = set(src.df(f"SELECT run_id FROM runs WHERE stage = 'distill' "
                              f"AND {src.not_in_sweep()}")["run_id"])
    if val.empty or not val["run_id"].isin(distill_runs).any():
        page.add("<p>No distillation run has logged <code>val_loss</code> yet.</p>")
        return page
    terms = thinned(src, DISTILL_TERMS_ROWS.format(not_in_sweep=src.not_in_sweep("r")))
    page.chart("distill", distill_chart(val, terms))
    page.add(howto(
        "Left: validation loss of the students trained from scratch and distilled from the "
        "teacher, same architecture; at equal steps, lower is better. Right: each term of the "
        "distillation objective as logged (per target token, before its weight). The table gives "
        "the validation loss at the steps every run evaluated."))
    steps = equal_steps_table(val)
    page.add(table(steps) if not steps.empty else
             note("The runs have no evaluated step in common."))
    return page
