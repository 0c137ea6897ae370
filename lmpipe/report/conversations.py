"""Accuracy as a conversation grows: `conversation_accuracy` per turn, per model on the
distillation page and per sweep group on the scaling page.

The eval stage's conversation trees (lmpipe/eval/conversations.py) record one row per turn depth
(`evals.turn`; branches at their depth). The chart draws, for each model, accuracy against the
turn, one panel per split (trained, held-out people), over the replicates of one eval run's group
(each run's rows averaged first, then the mean with a band from the lowest to the highest
replicate), aggregated in SQL. A flat line holds up as the dialog grows; a falling one loses the
thread. A sweep's eval runs (recipes/in-tool-learning/conversations.yaml) draw one line per
replicate group instead, named by the point parameters that vary across the sweep.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from lmpipe.report.page import Page, howto
from lmpipe.report.source import Source, label
from lmpipe.store.spread import spread_sql

TURN_ROWS = """
SELECT run_id, model, split, turn, avg(value) AS value, max(n) AS n
FROM evals WHERE run_id IN ({runs}) AND metric = 'conversation_accuracy'
  AND turn IS NOT NULL AND step IS NULL AND attribute IS NULL AND isfinite(value)
GROUP BY ALL
"""


def turn_rows(src: Source, run_ids: list[str]) -> pd.DataFrame:
    """(model, split, turn, value = mean, value_min, value_max, value_n = replicates, n =
    questions) over `run_ids`; empty when the store has no per-turn rows."""
    if not run_ids or not src.has("evals", "turn", "step"):
        return pd.DataFrame()
    rows = TURN_ROWS.format(runs=", ".join("?" * len(run_ids)))
    return src.df(spread_sql(rows, ["model", "split", "turn"], ["value", "n"])
                  + " ORDER BY split, model, turn", list(run_ids))


SWEEP_TURN_ROWS = """
SELECT e.run_id, g.group_id, e.model, e.split, e.turn, avg(e.value) AS value, max(e.n) AS n
FROM evals e JOIN ({groups}) g USING (run_id)
WHERE g.sweep IS NOT NULL AND e.metric = 'conversation_accuracy' AND e.turn IS NOT NULL
  AND e.step IS NULL AND e.attribute IS NULL AND isfinite(e.value)
GROUP BY ALL
"""


def sweep_turn_rows(src: Source) -> pd.DataFrame:
    """Per-turn accuracy of the sweeps' eval runs per replicate group (mean, min, max over the
    group's seeds), each group named in `line` by the point parameters that vary."""
    if not src.has("evals", "turn", "step") or not src.has("runs", "sweep"):
        return pd.DataFrame()
    rows = SWEEP_TURN_ROWS.format(groups=src.run_groups_sql())
    out = src.df(spread_sql(rows, ["group_id", "model", "split", "turn"], ["value", "n"])
                 + " ORDER BY group_id, split, turn")
    if out.empty:
        return out
    keys = src.varying_point_keys()
    first_run = src.run_groups.groupby("group_id")["run_id"].min()
    values = {key: src.param_per_run(key) for key in keys}
    names = {group: ", ".join(f"{key}={label(values[key].get(run))}" for key in keys) or group
             for group, run in first_run.items()}
    out["line"] = [names.get(g, g) + ("" if m == "teacher" else f" ({m})")
                   for g, m in zip(out["group_id"], out["model"])]
    return out


def turn_chart(rows: pd.DataFrame, models: list[str], by: str = "model") -> alt.FacetChart:
    """Accuracy against the conversation's turn, a line per `by` (a model, or a sweep group's
    `line`), a panel per split."""
    spread = bool((rows["value_n"] > 1).any())
    base = alt.Chart().encode(
        x=alt.X("turn:O", title="turn of the conversation (questions asked so far)"),
        color=alt.Color(f"{by}:N", sort=models, title=by))
    tooltip = [f"{by}:N", "split:N", "turn:O",
               alt.Tooltip("value:Q", title="mean" if spread else "accuracy", format=".3f"),
               alt.Tooltip("n:Q", title="questions")]
    if spread:
        tooltip += [alt.Tooltip("value_min:Q", title="min", format=".3f"),
                    alt.Tooltip("value_max:Q", title="max", format=".3f"),
                    alt.Tooltip("value_n:Q", title="replicates")]
    scale = alt.Scale(domain=[0, 1])
    layers = [base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="conversation accuracy (exact match, fraction)", scale=scale),
        tooltip=tooltip)]
    if spread:
        layers.insert(0, base.mark_area(opacity=0.15).encode(
            y=alt.Y("value_min:Q", scale=scale), y2="value_max:Q"))
    return alt.layer(*layers, data=rows).properties(width=260, height=180).facet(
        column=alt.Column("split:N", title="people asked about"))


def add_sweep_turns(page: Page, src: Source) -> None:
    """The scaling page's section: the sweeps' per-turn accuracy, when any sweep recorded it."""
    rows = sweep_turn_rows(src)
    if rows.empty:
        return
    page.add("<h2>Accuracy as a conversation grows</h2>")
    page.chart("conversation_turns", turn_chart(rows, sorted(rows["line"].unique()), by="line"))
    page.add(howto(
        "Each sweep point's model asked conversation trees through the tool "
        "(<code>eval.conversations</code>): a person's questions one after another in one dialog, "
        "the model's earlier turns in context, and branches about someone else. Exact-match "
        "accuracy at each turn, one line per group of seeds named by the parameters that vary "
        "across the sweep" + (": the mean, with a band from the lowest to the highest seed."
                             if bool((rows["value_n"] > 1).any()) else ".")))
