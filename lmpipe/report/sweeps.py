"""sweeps.html: what each sweep's axes did to the model it trains, point by point.

One section per sweep in the store. Its *axes* are the parameters that vary across its points (a
seeds axis's keys are replicates, not axes). Each point trains one model and evaluates it: the
*trained run* is the point's run folder named after the first axis's params section
(`distill.train.lr` -> the point's `distill` run; `teacher.model.d_model` -> `teacher`), else its
last training run (stage train, distill or quantize). The section shows:

- a table, one row per group of replicates: the axis values, the trained model's held-out and
  trained tool accuracy from the point's eval run (the eval stage's rows for that model), its
  final validation loss, its optimizer's state bytes (lmpipe/train/optim.py `state_bytes`), the
  run's peak RSS and wall time, each as mean (min–max) over the seeds, aggregated in SQL;
- the best value of the last axis for each value of the others (highest held-out tool accuracy,
  then lowest validation loss), marked when it sits at the edge of the values swept (the optimum
  may lie beyond the grid);
- the validation loss and the periodic tool accuracy over training, the mean over seeds per group,
  coloured by the values of every axis but the last, one panel per value of the last, thinned to
  the page's point budget as curves.html is (lmpipe/report/curves.py).

The recipes that use it: recipes/optimizers (optimizer x learning rate) and
recipes/logit-vs-hidden (objective x layer map), both over recipes/distill-sweep/dvc.yaml.
"""

from __future__ import annotations

import json
from typing import Any

import altair as alt
import pandas as pd

from lmpipe.report import units
from lmpipe.report.curves import THIN_SQL, points_per_curve
from lmpipe.report.page import (
    NO_RUNS,
    Page,
    esc,
    fmt,
    fmt_count,
    fmt_spread,
    howto,
    note,
    table,
)
from lmpipe.report.source import Source, label

TRAINING_STAGES = ("train", "distill", "quantize")
RUN_SECTIONS = ("teacher", "student", "distill", "quantize")
# (column, table title, formatter) of the per-group figures
FIGURES = [("heldout", "tool acc., held-out", fmt), ("trained", "tool acc., trained", fmt),
           ("val_loss", "val loss (nats/token)", lambda v: fmt(v) if pd.isna(v) else f"{v:.4g}"),
           ("optimizer_bytes", "optimizer state (bytes)", fmt_count),
           ("peak_rss_mb", "peak RSS (MiB)", lambda v: fmt_count(v)),
           ("wall_time_s", "train wall time (s)", lambda v: fmt_count(v))]

# Per point of one sweep: its trained run's figures and its eval run's figures for that model.
POINT_SQL = """
WITH trained AS (
    SELECT run_id, sweep, point, {group} AS point_group, {seed} AS seed, name AS model,
           peak_rss_mb, wall_time_s,
           row_number() OVER (PARTITION BY point
                              ORDER BY (regexp_extract(run_id, '[^/]+$') = ?) DESC,
                                       started_at DESC NULLS LAST, run_id DESC) AS pick
    FROM runs WHERE sweep = ? AND stage IN {stages}
), evaluated AS (
    SELECT r.point, e.model,
           avg(e.value) FILTER (WHERE e.metric = 'tool_accuracy' AND e.split = 'heldout')
               AS heldout,
           avg(e.value) FILTER (WHERE e.metric = 'tool_accuracy' AND e.split = 'trained')
               AS trained
    FROM evals e JOIN runs r USING (run_id)
    WHERE r.sweep = ? AND r.stage = 'eval' AND e.attribute IS NULL AND {stage_rows}
    GROUP BY ALL
), summary AS ({summary})
SELECT t.run_id, t.point, coalesce(t.point_group, t.point) AS grp, t.seed, t.model,
       v.heldout, v.trained, s.val_loss, s.optimizer_bytes, t.peak_rss_mb, t.wall_time_s
FROM trained t
LEFT JOIN evaluated v ON v.point = t.point AND v.model = t.model
LEFT JOIN summary s USING (run_id)
WHERE t.pick = 1
"""

SUMMARY_SQL = """
    SELECT run_id,
           max(value_num) FILTER (WHERE key = 'final_val_loss') AS val_loss,
           max(value_num) FILTER (WHERE key = 'optimizer_state_bytes') AS optimizer_bytes
    FROM summaries GROUP BY run_id"""
# a store written before summaries were indexed
NO_SUMMARY_SQL = ("SELECT NULL::VARCHAR AS run_id, NULL::DOUBLE AS val_loss, "
                  "NULL::DOUBLE AS optimizer_bytes WHERE false")

GROUP_SQL = """
SELECT grp, count(*) AS n, {aggregates}
FROM ({points}) GROUP BY grp ORDER BY grp
"""

# the mean over a group's seeds, as THIN_SQL's rows (run_id = the group)
CURVE_ROWS = """
SELECT grp AS run_id, m.name AS metric, m.step, avg(m.value) AS value
FROM ({points}) p JOIN metrics m USING (run_id)
WHERE m.name IN ('val_loss', 'tool_accuracy')
GROUP BY ALL
"""


def sweep_axes(points: pd.DataFrame, seed_keys: set[str]) -> list[str]:
    """The keys of `points.params` (one sweep's rows of Source.sweep_points) that take more than
    one value, seed keys aside, in the grid file's order (the store's `axes`; else sorted)."""
    keys: dict[str, None] = {}
    if "axes" in points:
        for order in points["axes"]:
            listed = json.loads(order) if isinstance(order, str) else None
            keys.update(dict.fromkeys(listed if isinstance(listed, list) else []))
    for params in points["params"]:
        keys.update(dict.fromkeys(params))
    return [key for key in keys if key not in seed_keys
            and len({label(p.get(key)) for p in points["params"]}) > 1]


def group_values(points: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per group: `grp` and the value of every axis (as the grid wrote it)."""
    groups = points.get("point_group", points["point"]).fillna(points["point"])
    rows = {}
    for grp, params in zip(groups, points["params"]):
        rows.setdefault(grp, {"grp": grp, **{axis: params.get(axis) for axis in axes}})
    return pd.DataFrame(list(rows.values()), columns=["grp", *axes])


def best_per_rest(figures: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """For each combination of the axes but the last, the group whose held-out tool accuracy is
    highest (then validation loss lowest), with `edge` set when its last-axis value is the lowest
    or highest numeric value swept for that combination (a zip of optimizers and their own rates
    sweeps each optimizer's rates apart)."""
    last, rest = axes[-1], axes[:-1]
    ranked = figures.assign(_acc=figures["heldout_mean"].fillna(-1.0),
                            _loss=figures["val_loss_mean"].fillna(float("inf")))
    ranked = ranked.sort_values(["_acc", "_loss"], ascending=[False, True], kind="stable")
    keys = [ranked[a].map(label) for a in rest] if rest else [pd.Series(0, index=ranked.index)]
    by_rest = ranked.groupby(keys, sort=False)
    swept = [_numbers(group[last]) for _, group in by_rest]    # in ngroup()'s order
    number = by_rest.ngroup()
    best = by_rest.head(1)
    best = best.assign(edge=[_at_edge(v, swept[number[i]]) for i, v in best[last].items()])
    return best.drop(columns=["_acc", "_loss"])


def _numbers(values: pd.Series) -> list[float]:
    return sorted({float(v) for v in values
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _at_edge(value: Any, swept: list[float]) -> bool:
    """Whether `value` is the lowest or highest of more than two numeric values swept."""
    return len(swept) > 2 and value in (swept[0], swept[-1])


def _aggregates() -> str:
    return ", ".join(f"avg({c}) AS {c}_mean, min({c}) AS {c}_min, max({c}) AS {c}_max, "
                     f"count({c}) AS {c}_n" for c, _, _ in FIGURES)


def _points_sql(src: Source, first_axis: str) -> tuple[str, list[Any]]:
    section = first_axis.split(".", 1)[0]
    folder = section if section in RUN_SECTIONS else ""
    sql = POINT_SQL.format(
        stages=str(TRAINING_STAGES), stage_rows=src.stage_rows("e"),
        group="point_group" if src.has("runs", "point_group") else "point",
        seed="seed" if src.has("runs", "seed") else "NULL",
        summary=SUMMARY_SQL if src.has("summaries", "key", "value_num") else NO_SUMMARY_SQL)
    return sql, [folder]


def axis_text(value: Any) -> str:
    """An axis value as a table cell or legend entry: strings as they are, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def figure_table(figures: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """`sweep_figures`' rows as text cells: the axis values, then each figure 'mean (min–max)'."""
    out = pd.DataFrame({axis: figures[axis].map(axis_text) for axis in axes})
    for column, title, number in FIGURES:
        out[title] = [fmt_spread(m, lo, hi, n, number) for m, lo, hi, n in zip(
            figures[f"{column}_mean"], figures[f"{column}_min"], figures[f"{column}_max"],
            figures[f"{column}_n"])]
    out["seeds"] = figures["n"].astype(int)
    return out


def curve_chart(curves: pd.DataFrame, axes: list[str]) -> alt.TopLevelMixin:
    """Validation loss (log) and periodic tool accuracy against step: a line per group, coloured
    by the values of every axis but the last, a column of panels per value of the last (two axes
    or more)."""
    rest, last = (axes[:-1], axes[-1]) if len(axes) > 1 else (axes, None)
    legend = ", ".join(rest)
    # only what the chart reads goes into the page; plain column names, since Vega-Lite reads a
    # dot in a field name ("distill.train.lr") as a nested field
    data = pd.DataFrame({"grp": curves["grp"], "metric": curves["metric"], "step": curves["step"],
                         "value": curves["value"],
                         "series": [", ".join(axis_text(v) for v in values)
                                    for values in zip(*(curves[a] for a in rest))]})
    if last is not None:
        data["panel"] = curves[last].map(axis_text)
    rows = []
    for metric, scale in (("val_loss", alt.Scale(type="log")),
                          ("tool_accuracy", alt.Scale(domain=[0, 1]))):
        part = data[data["metric"] == metric]
        if part.empty:
            continue
        chart = alt.Chart(part).mark_line(point=metric == "tool_accuracy").encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title=units.title(metric, log=metric == "val_loss"), scale=scale),
            color=alt.Color("series:N", title=legend), detail="grp:N",
            tooltip=[alt.Tooltip("series:N", title=legend),
                     *([alt.Tooltip("panel:N", title=last)] if last else []),
                     "step:Q", alt.Tooltip("value:Q", format=".4g")],
        ).properties(width=220 if last else 520, height=180)
        if last is not None:
            chart = chart.facet(column=alt.Column("panel:N", title=last))
        rows.append(chart)
    return alt.vconcat(*rows).resolve_scale(color="shared")


def best_table(figures: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """`best_per_rest` as text cells: the axes, held-out tool accuracy, val loss, seeds, edge."""
    best = best_per_rest(figures, axes)
    shown = figure_table(best, axes)[[*axes, FIGURES[0][1], FIGURES[2][1], "seeds"]]
    shown["at the grid's edge"] = ["yes" if e else "" for e in best["edge"]]
    return shown


def sweep_figures(src: Source, sweep: str, points: pd.DataFrame,
                  axes: list[str] | None = None) -> tuple[list[str], pd.DataFrame]:
    """(axes, one row per group of `sweep` that has a finished trained run: its axis values and
    each figure's mean, min, max and count over its replicates). `axes` names them instead of
    the keys that vary (a sweep pinned to one value of a larger grid's axis)."""
    axes = axes or sweep_axes(points, src.seed_keys)
    if not axes:
        return axes, pd.DataFrame()
    points_sql, params = _points_sql(src, axes[0])
    per_group = src.df(GROUP_SQL.format(aggregates=_aggregates(), points=points_sql),
                       params + [sweep, sweep])
    return axes, group_values(points, axes).merge(per_group, on="grp", how="inner")


def sweep_section(src: Source, sweep: str, points: pd.DataFrame, page: Page, index: int) -> None:
    """The table, best-value table and curves of one sweep, added to `page`."""
    page.add(f"<h2>Sweep {esc(sweep)}</h2>")
    axes, figures = sweep_figures(src, sweep, points)
    if not axes:
        page.add("<p>Its points do not differ in any parameter.</p>")
        return
    if figures.empty:
        page.add("<p>No finished training run in its points yet.</p>")
        return
    page.add(howto(f"Axes: {', '.join(f'<code>{esc(a)}</code>' for a in axes)}. One row per "
                   "group of replicates; each figure is the mean over its seeds with the lowest "
                   "and highest in brackets. Tool accuracy is the evaluated model's (eval stage, "
                   "held-out people answerable only through the tool), the validation loss its "
                   "training run's last, the optimizer state the bytes of its moments and "
                   "buffers at the end."))
    page.add(table(figure_table(figures, axes)))
    best = best_table(figures, axes)
    page.add(f"<h3>Best <code>{esc(axes[-1])}</code>"
             + (f" for each {', '.join(f'<code>{esc(a)}</code>' for a in axes[:-1])}"
                if len(axes) > 1 else "") + "</h3>")
    page.add(table(best))
    if (best["at the grid's edge"] == "yes").any():
        page.add(note(f"A best value at the lowest or highest <code>{esc(axes[-1])}</code> swept "
                      "may not be the optimum: extend the grid past it."))
    points_sql, params = _points_sql(src, axes[0])
    keep = points_per_curve(8 * len(figures))   # two metrics a group, a quarter of the budget
    curves = src.df(THIN_SQL.format(rows=CURVE_ROWS.format(points=points_sql), keep=keep)
                    + " ORDER BY run_id, metric, step", params + [sweep, sweep])
    curves = curves.rename(columns={"run_id": "grp"})
    if not curves.empty:
        curves = curves.merge(group_values(points, axes), on="grp", how="left")
        page.chart(f"sweep-curves-{index}", curve_chart(curves, axes))


def build(src: Source) -> Page:
    page = Page("sweeps", "Sweeps")
    if src.empty:
        page.add(NO_RUNS)
        return page
    points = src.sweep_points
    if points.empty:
        page.add("<p>No sweeps yet: <code>lmpipe sweep recipes/optimizers/grid.yaml</code> "
                 "(README \"Sweeps\").</p>")
        return page
    for index, (sweep, rows) in enumerate(points.groupby("sweep", sort=True)):
        sweep_section(src, sweep, rows.reset_index(drop=True), page, index)
    return page
