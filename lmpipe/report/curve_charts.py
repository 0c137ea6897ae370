"""The charts of curves.html: a picked metric against step and tokens (a line per run, or a mean
line with a min-max band per replicate group) and accuracy with vs without the tool."""


from __future__ import annotations

import json

import altair as alt
import pandas as pd

from lmpipe.report import units
from lmpipe.report.curve_colors import Colors, inline_csv

TOOL_SERIES = ["recall", "tool_accuracy", "tool_accuracy (held-out)"]
# what each series of the tool chart is; the page describes only the series it draws
BAND_OPACITY = 0.18
ACCURACY_TITLE = "accuracy (fraction correct)"



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
