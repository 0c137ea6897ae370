"""curves.html: any logged metric against step and tokens, across runs, and accuracy with vs
without the tool over training.

The metric is picked with a dropdown (every metric name in `metrics`), x is the step (left) and
the tokens seen (right, from the `tokens` metric logged at the same step); colour is one parameter's
value per run (`color_by`; by default the first parameter that varies across sweep points, else the
run). Long curves are thinned in SQL to an evenly strided subset that keeps both ends, with a
per-curve budget so a thousand runs still make a page of a few MB; the points travel as inline CSV
joined to a small per-run table inside Vega (lookup), which keeps the page small.

Replicates (a sweep with `seeds`, lmpipe/sweep/grid.py): the runs of one group (same sweep point but for
the seed, same run name) become one curve, their mean at each step, with a band from the lowest to
the highest replicate, aggregated in SQL before thinning (lmpipe/store/spread.py). Colouring by a
seed key (`--color-by teacher.train.seed`, or `seed`) draws every replicate's own line instead.
Without replicates the charts are one line per run, as ever.

A distillation run's logged `loss` is its objective (and a QAT run's, a distillation under the
quantize stage): it is listed as `distill objective` / `qat objective`, never on the axis of a
training run's cross-entropy. The y axis is titled with the picked metric and its unit
(lmpipe.report.units), drawn as a text mark because a Vega-Lite axis title cannot follow a
parameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd

from lmpipe.report import units
from lmpipe.report.page import NO_RUNS, Page, esc, howto, note
from lmpipe.report.source import Source, label

MAX_POINTS_PER_CURVE = 500   # a lone curve keeps this many points at most (both ends always kept)
MIN_POINTS_PER_CURVE = 12    # however many curves there are
POINT_BUDGET = 120_000       # points of all curves together, before the per-curve floor
FIRST_METRICS = ["loss", "val_loss", "distill objective", "qat objective", "recall",
                 "tool_accuracy", "lr", "grad_norm", "tokens_per_s"]
TOOL_SERIES = ["recall", "tool_accuracy", "tool_accuracy (held-out)"]
# what each series of the tool chart is; the page describes only the series it draws
TOOL_TEXT = {"recall": "answers the trained people's questions from the weights alone",
             "tool_accuracy": "answers them by querying the database tool",
             "tool_accuracy (held-out)": ("asks about people who exist only in the database "
                                          "(from checkpoint evals)")}
RUN_COLUMNS = {"run_id", "stage", "name", "status", "sweep", "point", "point_group", "seed",
               "host", "device", "git_commit", "lmpipe_version"}
BAND_OPACITY = 0.18
ACCURACY_TITLE = "accuracy (fraction correct)"
MAX_LEGEND = 20              # more colours than this: no legend (tooltips name the run)

# {rows}: a query of (run_id, metric, step, value); {keep}: points kept per curve at most
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
# colour: one value per run


def default_color_by(src: Source) -> str:
    """The first parameter varying across sweep points, else run_id."""
    varying = src.varying_point_keys()
    return varying[0] if varying else "run_id"


def run_colors(src: Source, color_by: str, run_ids: list[str]) -> tuple[dict[str, Any], str | None]:
    """run_id -> raw colour value for `run_ids`, and a note when `color_by` had to fall back."""
    if color_by in RUN_COLUMNS and color_by in src.columns.get("runs", set()):
        values = dict(src.con.execute(f"SELECT run_id, {color_by} FROM runs").fetchall())
        return {r: values.get(r) for r in run_ids}, None
    values = src.param_per_run(color_by)
    if not any(r in values for r in run_ids):
        return {r: r for r in run_ids}, (f"No run has the parameter <code>{esc(color_by)}</code>; "
                                         "coloured by run instead.")
    return {r: values.get(r) for r in run_ids}, None


@dataclass
class Colors:
    """Per-run colour fields (`c`: a label, `cq`: the number when continuous) and the encoding."""

    fields: dict[str, dict[str, Any]]
    encoding: alt.Color
    field: str
    clickable: bool  # a discrete legend: clicking an entry highlights its runs


def color_encoding(raw: dict[str, Any], title: str) -> Colors:
    """Few numeric values: ordered categories (viridis); many: a continuous scale (log when they
    span two decades); anything else: categories, without a legend when there are too many."""
    values = [v for v in raw.values() if v is not None]
    numeric = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   for v in values)
    labels = {r: label(v) if v is not None else "–" for r, v in raw.items()}
    distinct = sorted(set(labels.values()))
    if numeric and len(distinct) > MAX_LEGEND:
        low, high = min(values), max(values)
        log = low > 0 and high / low >= 100
        scale = alt.Scale(type="log" if log else "linear", scheme="viridis")
        return Colors({r: {"c": labels[r], "cq": raw[r]} for r in raw},
                      alt.Color("cq:Q", title=title, scale=scale), "cq", False)
    if numeric:
        order = sorted({label(v) for v in values}, key=float) + (["–"] if "–" in distinct else [])
        return Colors({r: {"c": labels[r]} for r in raw},
                      alt.Color("c:O", title=title, sort=order, scale=alt.Scale(scheme="viridis")),
                      "c", True)
    legend = len(distinct) <= MAX_LEGEND
    scheme = "category10" if len(distinct) <= 10 else "category20"
    return Colors({r: {"c": labels[r]} for r in raw},
                  alt.Color("c:N", title=title, legend=alt.Legend() if legend else None,
                            scale=alt.Scale(scheme=scheme)), "c", legend)


def run_table(src: Source, run_ids: list[str], fields: dict[str, dict[str, Any]],
              groups: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-run lookup table: index r, run id, sweep point, colour fields; with `groups`
    (one row per group id: sweep, point_group, replicates) the curves are groups, and `n` is the
    number of replicates."""
    if groups is not None:
        rows = [{"r": i, "run": g, "point": (f"{groups.at[g, 'sweep']}/"
                                             f"{groups.at[g, 'point_group']}"
                                             if isinstance(groups.at[g, "sweep"], str) else "–"),
                 "n": int(groups.at[g, "replicates"]), **fields[g]}
                for i, g in enumerate(run_ids)]
        return pd.DataFrame(rows)
    points = {r: f"{s}/{p}" for r, s, p in src.run_points.itertuples(index=False)}
    rows = [{"r": i, "run": run_id, "point": points.get(run_id, "–"), **fields[run_id]}
            for i, run_id in enumerate(run_ids)]
    return pd.DataFrame(rows)


def aggregates(src: Source, color_by: str) -> bool:
    """Whether curves are drawn per group of replicates: some group has several, and the colour
    is not a seed (which asks to see each replicate)."""
    return src.replicated and color_by not in src.seed_keys and color_by != "seed"


def group_colors(src: Source, color_by: str, group_ids: list[str]
                 ) -> tuple[dict[str, Any], str | None]:
    """group id -> raw colour value: that of the group's first run (the replicates share every
    parameter but the seed)."""
    if color_by == "run_id":
        return {g: g for g in group_ids}, None
    first = src.run_groups.drop_duplicates("group_id").set_index("group_id")["run_id"]
    raw, fallback = run_colors(src, color_by, [first[g] for g in group_ids])
    if fallback:
        return {g: g for g in group_ids}, fallback
    return {g: raw[first[g]] for g in group_ids}, None


def inline_csv(frame: pd.DataFrame, numbers: list[str]) -> alt.InlineData:
    """A frame as inline CSV: about half the bytes of JSON records, parsed by Vega."""
    text = frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    return alt.InlineData(values=text, format=alt.DataFormat(
        type="csv", parse={c: "number" for c in numbers}))


# ---------------------------------------------------------------------------------------------
# charts

LOG_LABELS = "logy ? format(pow(10, datum.value), '.3~g') : format(datum.value, '.4~g')"
AXIS_WIDTH = 50   # the y axis's labels; its title is drawn just left of them
HEIGHT = 300
X_TITLES = {"step": "optimizer step (count)", "tokens": "tokens seen (count)"}


def y_axis() -> alt.Axis:
    """The y axis of a dropdown chart: no title of its own (axis_title draws it), a fixed width."""
    return alt.Axis(title=None, labelExpr=LOG_LABELS, minExtent=AXIS_WIDTH, maxExtent=AXIS_WIDTH)


def axis_title(metrics: list[str]) -> alt.Chart:
    """The y axis title of the picked metric with its unit, as a text mark: a Vega-Lite axis title
    cannot follow a parameter, and "value" would not say what is drawn, nor in what unit."""
    linear = json.dumps([units.title(m) for m in metrics]).replace("'", "\\'")
    log = json.dumps([units.title(m, log=True) for m in metrics]).replace("'", "\\'")
    return (alt.Chart(pd.DataFrame({"k": [0]}))
            .transform_calculate(label=f"(logy ? {log} : {linear})[metric]")
            .mark_text(angle=270, fontSize=11, fontWeight="bold", baseline="bottom")
            .encode(x=alt.value(-AXIS_WIDTH - 4), y=alt.value(HEIGHT / 2), text="label:N"))


def metric_chart(points: pd.DataFrame, metrics: list[str], runs: pd.DataFrame, colors: Colors,
                 title: str) -> alt.TopLevelMixin:
    """The dropdown-driven curve chart: value against step and, when logged, against tokens; with
    replicates (columns l and h: the lowest and highest), each mean line over its min–max band."""
    if "l" in points:
        return band_metric_chart(points, metrics, runs, colors, title)
    metric = alt.param(name="metric", value=0, bind=alt.binding_select(
        options=list(range(len(metrics))), labels=metrics, name="metric "))
    logy = alt.param(name="logy", value=True, bind=alt.binding_checkbox(name="log y "))
    pick = alt.selection_point(fields=[colors.field], bind="legend") if colors.clickable else None
    lookup = [c for c in runs.columns if c != "r"]
    tooltip = [alt.Tooltip("run:N"), alt.Tooltip("point:N"),
               alt.Tooltip("c:N", title=title), alt.Tooltip("s:Q", title="step"),
               alt.Tooltip("t:Q", title="tokens", format=","),
               alt.Tooltip("v:Q", title="value", format=".5~g")]
    names = json.dumps(metrics).replace("'", "\\'")  # a JS array literal for the titles
    panels = []
    has_tokens = points["t"].notna().any()
    for x, x_title in [("s", "step")] + ([("t", "tokens")] if has_tokens else []):
        axis_x = X_TITLES[x_title]
        title_expr = f"{names}[metric] + ' against {x_title}' + (logy ? ' (log scale)' : '')"
        chart = (alt.Chart()
                 .transform_filter("datum.m == metric")
                 .transform_filter(f"isValid(datum.{x})")
                 .transform_filter("!logy || datum.v > 0")
                 .transform_lookup(lookup="r", from_=alt.LookupData(data=runs, key="r",
                                                                     fields=lookup))
                 .transform_calculate(y="logy ? log(datum.v) / LN10 : datum.v")
                 .mark_line(strokeWidth=1.2, point=alt.OverlayMarkDef(size=8, opacity=0))
                 .encode(x=alt.X(f"{x}:Q", title=axis_x),
                         y=alt.Y("y:Q", scale=alt.Scale(zero=False), axis=y_axis()),
                         color=colors.encoding, detail="r:N", tooltip=tooltip)
                 )
        if pick is not None:  # the line only: the hover points stay invisible
            chart = chart.encode(strokeOpacity=alt.condition(pick, alt.value(1.0),
                                                             alt.value(0.12)))
        panels.append(alt.layer(chart, axis_title(metrics),
                                title=alt.Title(text=alt.ExprRef(expr=title_expr)))
                      .properties(width=460, height=HEIGHT))
    if pick is not None:
        panels[0].layer[0] = panels[0].layer[0].add_params(pick)
    data = inline_csv(points, ["r", "m", "s", "t", "v"])
    top = alt.hconcat(*panels, data=data) if len(panels) > 1 else panels[0].properties(data=data)
    return top.add_params(metric, logy)


def band_metric_chart(points: pd.DataFrame, metrics: list[str], runs: pd.DataFrame,
                      colors: Colors, title: str) -> alt.TopLevelMixin:
    """metric_chart over groups of replicates: per panel a min–max band under the mean line."""
    metric = alt.param(name="metric", value=0, bind=alt.binding_select(
        options=list(range(len(metrics))), labels=metrics, name="metric "))
    logy = alt.param(name="logy", value=True, bind=alt.binding_checkbox(name="log y "))
    pick = alt.selection_point(fields=[colors.field], bind="legend") if colors.clickable else None
    lookup = [c for c in runs.columns if c != "r"]
    tooltip = [alt.Tooltip("run:N", title="group"), alt.Tooltip("point:N"),
               alt.Tooltip("n:Q", title="replicates"),
               alt.Tooltip("c:N", title=title), alt.Tooltip("s:Q", title="step"),
               alt.Tooltip("t:Q", title="tokens", format=","),
               alt.Tooltip("v:Q", title="mean", format=".5~g"),
               alt.Tooltip("l:Q", title="min", format=".5~g"),
               alt.Tooltip("h:Q", title="max", format=".5~g")]
    names = json.dumps(metrics).replace("'", "\\'")
    axis = y_axis()
    panels = []
    has_tokens = points["t"].notna().any()
    for k, (x, x_title) in enumerate([("s", "step")] + ([("t", "tokens")] if has_tokens else [])):
        axis_x = X_TITLES[x_title]
        title_expr = f"{names}[metric] + ' against {x_title}' + (logy ? ' (log scale)' : '')"
        band = alt.Chart().mark_area(opacity=BAND_OPACITY).encode(
            y=alt.Y("yl:Q", scale=alt.Scale(zero=False), axis=axis), y2="yh:Q")
        line = (alt.Chart().mark_line(strokeWidth=1.2, point=alt.OverlayMarkDef(size=8, opacity=0))
                .encode(y=alt.Y("y:Q", scale=alt.Scale(zero=False), axis=axis),
                        tooltip=tooltip))
        if pick is not None:
            band = band.encode(fillOpacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)))
            line = line.encode(strokeOpacity=alt.condition(pick, alt.value(1.0),
                                                           alt.value(0.12)))
            if k == 0:
                line = line.add_params(pick)
        curves = (
            alt.layer(band, line)
            .transform_filter("datum.m == metric")
            .transform_filter(f"isValid(datum.{x})")
            .transform_filter("!logy || datum.v > 0")
            .transform_lookup(lookup="r", from_=alt.LookupData(data=runs, key="r", fields=lookup))
            # a band edge at or below 0 sits on the mean in log scale rather than at -infinity
            .transform_calculate(y="logy ? log(datum.v) / LN10 : datum.v",
                                 yl="logy ? (datum.l > 0 ? log(datum.l) / LN10 : datum.y) "
                                    ": datum.l",
                                 yh="logy ? log(datum.h) / LN10 : datum.h")
            .encode(x=alt.X(f"{x}:Q", title=axis_x), color=colors.encoding, detail="r:N"))
        panels.append(alt.layer(curves, axis_title(metrics),
                                title=alt.Title(text=alt.ExprRef(expr=title_expr)))
                      .properties(width=460, height=HEIGHT))
    data = inline_csv(points, ["r", "m", "s", "t", "v", "l", "h"])
    top = alt.hconcat(*panels, data=data) if len(panels) > 1 else panels[0].properties(data=data)
    return top.add_params(metric, logy)


def tool_chart(points: pd.DataFrame, runs: pd.DataFrame, colors: Colors,
               title: str) -> alt.TopLevelMixin:
    """Recall (no tool) and tool accuracy against step: colour = run/param, dash = metric; with
    replicates (columns l and h), each mean line over its min–max band."""
    if "l" in points:
        return band_tool_chart(points, runs, colors, title)
    pick = alt.selection_point(fields=[colors.field], bind="legend") if colors.clickable else None
    series = [s for s in TOOL_SERIES if s in set(points["metric"])] + sorted(
        set(points["metric"]) - set(TOOL_SERIES))
    chart = (alt.Chart(inline_csv(points, ["r", "s", "v"]),
                       title="accuracy with (tool_accuracy) vs without (recall) the tool")
             .transform_lookup(lookup="r", from_=alt.LookupData(
                 data=runs, key="r", fields=[c for c in runs.columns if c != "r"]))
             .mark_line(point=True, strokeWidth=1.2)
             .encode(x=alt.X("s:Q", title=X_TITLES["step"]),
                     y=alt.Y("v:Q", title=ACCURACY_TITLE, scale=alt.Scale(domain=[0, 1])),
                     color=colors.encoding,
                     strokeDash=alt.StrokeDash("metric:N", title="metric", sort=series),
                     detail="r:N",
                     tooltip=[alt.Tooltip("run:N"), alt.Tooltip("point:N"),
                              alt.Tooltip("c:N", title=title),
                              alt.Tooltip("metric:N"), alt.Tooltip("s:Q", title="step"),
                              alt.Tooltip("v:Q", title="accuracy", format=".4f")])
             .properties(width=560, height=300))
    if pick is not None:
        chart = chart.encode(opacity=alt.condition(pick, alt.value(1.0), alt.value(0.12))
                             ).add_params(pick)
    return chart


def band_tool_chart(points: pd.DataFrame, runs: pd.DataFrame, colors: Colors,
                    title: str) -> alt.TopLevelMixin:
    """tool_chart over groups of replicates: a min–max band under each mean line."""
    pick = alt.selection_point(fields=[colors.field], bind="legend") if colors.clickable else None
    series = [s for s in TOOL_SERIES if s in set(points["metric"])] + sorted(
        set(points["metric"]) - set(TOOL_SERIES))
    y = alt.Y("v:Q", title=ACCURACY_TITLE, scale=alt.Scale(domain=[0, 1]))
    band = alt.Chart().mark_area(opacity=BAND_OPACITY).encode(
        y=alt.Y("l:Q", title=ACCURACY_TITLE, scale=alt.Scale(domain=[0, 1])), y2="h:Q",
        detail=["r:N", "metric:N"])
    line = (alt.Chart().mark_line(point=True, strokeWidth=1.2)
            .encode(y=y, strokeDash=alt.StrokeDash("metric:N", title="metric", sort=series),
                    detail="r:N",
                    tooltip=[alt.Tooltip("run:N", title="group"), alt.Tooltip("point:N"),
                             alt.Tooltip("n:Q", title="replicates"),
                             alt.Tooltip("c:N", title=title),
                             alt.Tooltip("metric:N"), alt.Tooltip("s:Q", title="step"),
                             alt.Tooltip("v:Q", title="mean", format=".4f"),
                             alt.Tooltip("l:Q", title="min", format=".4f"),
                             alt.Tooltip("h:Q", title="max", format=".4f")]))
    if pick is not None:
        band = band.encode(fillOpacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)))
        line = line.encode(opacity=alt.condition(pick, alt.value(1.0), alt.value(0.12))
                           ).add_params(pick)
    return (alt.layer(band, line, data=inline_csv(points, ["r", "s", "v", "l", "h"]),
                      title="accuracy with (tool_accuracy) vs without (recall) the tool")
            .transform_lookup(lookup="r", from_=alt.LookupData(
                data=runs, key="r", fields=[c for c in runs.columns if c != "r"]))
            .encode(x=alt.X("s:Q", title=X_TITLES["step"]), color=colors.encoding)
            .properties(width=560, height=300))


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

