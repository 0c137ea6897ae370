"""curves.html: any logged metric against step and tokens, across runs, and accuracy with vs
without the tool over training.

The metric is picked with a dropdown (every metric name in `metrics`), x is the step (left) and
the tokens seen (right, from the `tokens` metric logged at the same step); colour is one parameter's
value per run (`color_by`; by default the first parameter that varies across sweep points, else the
run). Long curves are thinned in SQL to an evenly strided subset that keeps both ends, with a
per-curve budget so a thousand runs still make a page of a few MB; the points travel as inline CSV
joined to a small per-run table inside Vega (lookup), which keeps the page small.

Replicates (a sweep with `seeds`, lmpipe/sweep/grid.py): the runs of one group (same sweep point but
for the seed, same run name) become one curve, their mean at each step, with a band from the lowest
to the highest replicate, aggregated in SQL before thinning (lmpipe/store/spread.py). Colouring by a
seed key (`--color-by teacher.train.seed`, or `seed`) draws every replicate's own line instead.
Without replicates the charts are one line per run, as ever.

A distillation run's logged `loss` is its objective (and a QAT run's, a distillation under the
quantize stage): it is listed as `distill objective` / `qat objective`, never on the axis of a
training run's cross-entropy. The y axis is titled with the picked metric and its unit
(lmpipe.report.units), drawn as a text mark because a Vega-Lite axis title cannot follow a
parameter.
"""

from __future__ import annotations

import pandas as pd

from lmpipe.report.curve_charts import TOOL_SERIES, metric_chart, tool_chart
from lmpipe.report.curve_colors import (
    aggregates,
    color_encoding,
    default_color_by,
    group_colors,
    run_colors,
    run_table,
)
from lmpipe.report.page import NO_RUNS, Page, esc, howto, note
from lmpipe.report.source import Source

MAX_POINTS_PER_CURVE = 500   # a lone curve keeps this many points at most (both ends always kept)
MIN_POINTS_PER_CURVE = 12    # however many curves there are
POINT_BUDGET = 120_000       # points of all curves together, before the per-curve floor
FIRST_METRICS = ["loss", "val_loss", "distill objective", "qat objective", "recall",
                 "tool_accuracy", "lr", "grad_norm", "tokens_per_s"]
TOOL_TEXT = {"recall": "answers the trained people's questions from the weights alone",
             "tool_accuracy": "answers them by querying the database tool",
             "tool_accuracy (held-out)": ("asks about people who exist only in the database "
                                          "(from checkpoint evals)")}
THIN_SQL = """
WITH numbered AS (
    SELECT *, row_number() OVER (PARTITION BY run_id, metric ORDER BY step) - 1 AS _i,
              count(*) OVER (PARTITION BY run_id, metric) AS _n
    FROM ({rows})
)
SELECT * EXCLUDE (_i, _n) FROM numbered  -- an even stride, and always the last point
WHERE _i % greatest(1, ceil(_n / {keep}))::BIGINT = 0 OR _i = _n - 1
"""

# a resumed run may log a step twice: the duplicates are averaged. A distillation run (and QAT,
# a distillation under the quantize stage) logs its objective as `loss`: it is renamed so it never
# shares an axis, or a dropdown entry, with the plain cross-entropy of a training run
METRIC_ROWS = """
SELECT m.run_id, CASE WHEN m.name <> 'loss' THEN m.name
                      WHEN r.stage = 'distill' THEN 'distill objective'
                      WHEN r.stage = 'quantize' THEN 'qat objective'
                      ELSE m.name END AS metric,
       m.step, avg(m.value) AS value
FROM metrics m LEFT JOIN runs r USING (run_id)
WHERE isfinite(m.value) GROUP BY ALL
"""
CURVES_SQL = THIN_SQL.format(rows=METRIC_ROWS, keep=MAX_POINTS_PER_CURVE)

TOOL_ROWS = """
SELECT run_id, name AS metric, step, avg(value) AS value FROM metrics
WHERE name IN ('recall', 'tool_accuracy') AND isfinite(value) GROUP BY ALL
{evals}
"""
# checkpoint evals (evals rows with a step): overall rows only
TOOL_EVAL_ROWS = """
UNION ALL
SELECT run_id, metric || CASE WHEN split = 'heldout' THEN ' (held-out)' ELSE '' END AS metric,
       step, avg(value) AS value FROM evals
WHERE step IS NOT NULL AND attribute IS NULL AND isfinite(value)
  AND metric IN ('recall', 'tool_accuracy') AND coalesce(split, 'trained') IN ('trained', 'heldout')
GROUP BY ALL
"""


# replicates: one curve per group (its id in run_id), the mean with the lowest and highest replicate
GROUP_ROWS = """
SELECT g.group_id AS run_id, r.metric, r.step, avg(r.value) AS value, min(r.value) AS lo,
       max(r.value) AS hi
FROM ({rows}) r JOIN ({groups}) g USING (run_id)
GROUP BY g.group_id, r.metric, r.step
"""




def points_per_curve(curves: int) -> int:
    """How many points each of `curves` curves keeps, within the page's budget."""
    if curves <= 0:
        return MAX_POINTS_PER_CURVE
    return max(MIN_POINTS_PER_CURVE, min(MAX_POINTS_PER_CURVE, POINT_BUDGET // curves))


def thinned(src: Source, rows: str) -> pd.DataFrame:
    """(run_id, metric, step, value) of `rows`, thinned to the budget, ordered for drawing."""
    curves = src.scalar(f"SELECT count(*) FROM (SELECT DISTINCT run_id, metric FROM ({rows}))")
    sql = THIN_SQL.format(rows=rows, keep=points_per_curve(curves or 0))
    return src.df(sql + " ORDER BY run_id, metric, step")


def metric_order(names: list[str]) -> list[str]:
    return [m for m in FIRST_METRICS if m in names] + sorted(set(names) - set(FIRST_METRICS))


# ---------------------------------------------------------------------------------------------
# the page


def build(src: Source, color_by: str | None = None) -> Page:
    page = Page("curves", "curves")
    if src.empty:
        page.add(NO_RUNS)
        return page
    key = color_by or default_color_by(src)
    grouped = aggregates(src, key)
    metric_rows = METRIC_ROWS
    tool_rows = TOOL_ROWS.format(evals=TOOL_EVAL_ROWS if src.has("evals", "step") else "")
    token_rows = ("SELECT run_id, step, avg(value) AS t FROM metrics "
                  "WHERE name = 'tokens' AND isfinite(value) GROUP BY ALL")
    if grouped:  # one curve per group of replicates: the SQL folds them before thinning
        groups_sql = src.run_groups_sql()
        metric_rows = GROUP_ROWS.format(rows=metric_rows, groups=groups_sql)
        tool_rows = GROUP_ROWS.format(rows=tool_rows, groups=groups_sql)
        token_rows = (f"SELECT g.group_id AS run_id, m.step, avg(m.t) AS t FROM ({token_rows}) m "
                      f"JOIN ({groups_sql}) g USING (run_id) GROUP BY ALL")
    curves = thinned(src, metric_rows)
    tool = thinned(src, tool_rows)
    run_ids = sorted(set(curves["run_id"]) | set(tool["run_id"]))
    if not run_ids:
        page.add("<h2>Training curves</h2>", "<p>No run has logged a metric yet.</p>")
        return page

    if grouped:
        raw, fallback = group_colors(src, key, run_ids)
        groups = (src.run_groups.drop_duplicates("group_id").set_index("group_id")
                  [["sweep", "point_group", "replicates"]])
    else:
        raw, fallback = run_colors(src, key, run_ids)
        groups = None
    title = "run" if fallback or key == "run_id" else key
    colors = color_encoding(raw, title)
    runs = run_table(src, run_ids, colors.fields, groups)
    index = {run_id: i for i, run_id in enumerate(run_ids)}

    page.add("<h2>Training curves</h2>")
    if fallback:
        page.add(note(fallback))
    if curves.empty:
        page.add("<p>No run has logged a metric yet.</p>")
    else:
        metrics = metric_order(sorted(set(curves["metric"])))
        tokens = src.df(token_rows)
        merged = curves.merge(tokens, on=["run_id", "step"], how="left")
        points = pd.DataFrame({
            "r": merged["run_id"].map(index), "m": merged["metric"].map(
                {m: i for i, m in enumerate(metrics)}),
            "s": merged["step"], "t": merged["t"].round().astype("Int64"), "v": merged["value"]})
        if grouped:
            points["l"], points["h"] = merged["lo"], merged["hi"]
        page.chart("curves", metric_chart(points, metrics, runs, colors, title))
        kept = points_per_curve(curves.groupby(["run_id", "metric"]).ngroups)
        lines = (("One line per group of replicates (runs that differ only in their seed): the "
                  "mean at each step over a band from the lowest to the highest replicate (colour "
                  "by a seed key to see each replicate), ")
                 if grouped else "One line per run, ")
        page.add(howto(
            f"Pick the metric in the dropdown under the chart. Left: its value against the "
            f"optimizer step; right (when runs log <code>tokens</code>): against the tokens seen. "
            f"{lines}coloured by <code>{esc(title)}</code>"
            + (" (click a legend entry to highlight it)" if colors.clickable else "") +
            "; hover for the run, its sweep point and the exact value. The y axis is logarithmic "
            "while <em>log y</em> is ticked (non-positive values are then hidden); losses are "
            "better lower, accuracies higher. <em>loss</em> is the training cross-entropy of "
            "runs trained from scratch; a distillation run's logged loss is its objective (the "
            "weighted sum of its terms) and is listed apart as <em>distill objective</em>, a "
            "quantization-aware run's as <em>qat objective</em>, so no axis mixes the two. "
            "Curves longer than "
            f"{kept} points are thinned to an even stride that keeps the first and last step."))

    page.add("<h2>With vs without the tool over training</h2>")
    if tool.empty:
        page.add("<p>No run has logged <code>recall</code> or <code>tool_accuracy</code> during "
                 "training yet (log them at eval steps, or evaluate checkpoints with "
                 "<code>flows/async_eval.py</code>).</p>")
    else:
        points = pd.DataFrame({"r": tool["run_id"].map(index), "metric": tool["metric"],
                               "s": tool["step"], "v": tool["value"]})
        if grouped:
            points["l"], points["h"] = tool["lo"], tool["hi"]
        page.chart("step_accuracy", tool_chart(points, runs, colors, title))
        series = set(tool["metric"])
        shown = [f"<em>{esc(m)}</em> {TOOL_TEXT[m]}" for m in TOOL_SERIES if m in series]
        page.add(howto(
            "Accuracy at each evaluated step (the dash pattern tells the metrics apart): "
            + "; ".join(shown) + ". Higher is better."
            + (" The gap between a run's recall and tool accuracy is what the tool adds at that "
               "point of training." if {"recall", "tool_accuracy"} <= series else "")
            + (" Held-out accuracy shows whether the model learned the protocol rather than the "
               "answers." if "tool_accuracy (held-out)" in series else "")))
    return page
