"""Accuracy as a conversation grows: `conversation_accuracy` per turn and model, for the
distillation page.

The eval stage's conversation trees (lmpipe/eval/conversations.py) record one row per turn depth
(`evals.turn`; branches at their depth). The chart draws, for each model, accuracy against the
turn, one panel per split (trained, held-out people), over the replicates of one eval run's group
(each run's rows averaged first, then the mean with a band from the lowest to the highest
replicate), aggregated in SQL. A flat line holds up as the dialog grows; a falling one loses the
thread.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from lmpipe.report.source import Source
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


def turn_chart(rows: pd.DataFrame, models: list[str]) -> alt.FacetChart:
    """Accuracy against the conversation's turn, a line per model, a panel per split."""
    spread = bool((rows["value_n"] > 1).any())
    base = alt.Chart().encode(
        x=alt.X("turn:O", title="turn of the conversation (questions asked so far)"),
        color=alt.Color("model:N", sort=models, title="model"))
    tooltip = ["model:N", "split:N", "turn:O",
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
