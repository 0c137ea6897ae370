"""probes.html: what the probes saw inside the network while it trained, and what linear probes
read from each layer of each checkpoint.

The first chart is a heatmap of one probe statistic over training: x = the recorded step, y = the
probed point from the embeddings (top) down to the logits, colour = the statistic; the points are
those of the run's architecture (lmpipe/train/probes.py: a recurrent model's blocks have a
`mixer`, no attention), drawn alike. Dropdowns pick
the run, the statistic (mean, std, RMS, max |x|, fraction of zeros, quantiles, attention entropy)
and the kind (forward values or gradients). At most `MAX_STEPS` evenly spaced recorded steps per
run are drawn, for the `MAX_RUNS` most recent runs with probes. The second is the linear-probe
accuracy per layer (y) and checkpoint step (x), one attribute (or their mean) at a time, beside its
controls (lmpipe/eval/linear_probe.py): the selectivity (accuracy - Hewitt & Liang's control-task
accuracy) and the accuracy beyond the next-token baseline, each a heatmap of its own with the
same run and attribute dropdowns. A store indexed before the controls were recorded has no
control columns, and one whose probe files predate them has NULLs: then only accuracy is drawn.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from lmpipe.report.page import NO_RUNS, Page, howto, note
from lmpipe.report.source import Source

MAX_STEPS = 120
MAX_RUNS = 20

PROBES_SQL = f"""
WITH recent AS (
    SELECT p.run_id FROM (SELECT DISTINCT run_id FROM probes) p JOIN runs USING (run_id)
    ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT {MAX_RUNS}
), steps AS (
    SELECT run_id, step, row_number() OVER (PARTITION BY run_id ORDER BY step) - 1 AS i,
           count(*) OVER (PARTITION BY run_id) AS n
    FROM (SELECT DISTINCT run_id, step FROM probes WHERE run_id IN (SELECT run_id FROM recent))
), kept AS (
    SELECT run_id, step FROM steps
    WHERE n <= {MAX_STEPS} OR i = n - 1 OR i % ceil(n / {MAX_STEPS})::BIGINT = 0
)
SELECT p.run_id, p.step, p.point, p.depth, p.site, p.kind, p.stat, p.value
FROM probes p JOIN kept USING (run_id, step)
WHERE isfinite(p.value) AND p.stat <> 'numel'
ORDER BY p.run_id, p.depth, p.point, p.step
"""

CONTROL_COLUMNS = ("control_next_token_accuracy", "control_task_accuracy", "selectivity")


def linear_sql(controls: bool) -> str:
    """Per (run, checkpoint, layer, attribute) and the mean of attributes: accuracy, chance and,
    from a store that has the columns, the controls and `beyond_next_token` (accuracy - the
    next-token baseline); NULLs otherwise, so the frame has the same columns either way."""
    if controls:
        cols = ", ".join(CONTROL_COLUMNS) + \
            ", accuracy - control_next_token_accuracy AS beyond_next_token"
        means = ", ".join(f"avg({c})" for c in CONTROL_COLUMNS) + \
            ", avg(accuracy - control_next_token_accuracy)"
    else:
        cols = ", ".join(f"NULL::DOUBLE AS {c}" for c in CONTROL_COLUMNS) + \
            ", NULL::DOUBLE AS beyond_next_token"
        means = ", ".join("NULL::DOUBLE" for _ in range(len(CONTROL_COLUMNS) + 1))
    return f"""
SELECT run_id, coalesce(step, -1) AS step, checkpoint, layer, attribute, accuracy, chance, {cols}
FROM linear_probes
UNION ALL
SELECT run_id, coalesce(step, -1), checkpoint, layer, 'mean of attributes', avg(accuracy),
       avg(chance), {means}
FROM linear_probes GROUP BY run_id, coalesce(step, -1), checkpoint, layer
ORDER BY run_id, attribute, layer, step
"""


LINEAR_SQL = linear_sql(controls=False)  # what older stores (no control columns) are read with

STAT_ORDER = ["rms", "mean", "std", "max_abs", "frac_zero", "q01", "q25", "q50", "q75", "q99",
              "entropy", "entropy_norm"]


def _dropdown(name: str, options: list[str], label: str) -> alt.Parameter:
    return alt.param(name=name, value=options[0],
                     bind=alt.binding_select(options=options, name=label))


def probe_heatmap(frame: pd.DataFrame) -> alt.Chart:
    runs = sorted(frame["run_id"].unique())
    stats = [s for s in STAT_ORDER if s in set(frame["stat"])] + sorted(
        set(frame["stat"]) - set(STAT_ORDER))
    kinds = [k for k in ("forward", "grad") if k in set(frame["kind"])]
    run, stat, kind = (_dropdown("run", runs, "run "), _dropdown("stat", stats, "statistic "),
                       _dropdown("kind", kinds, "kind "))
    points = frame.sort_values(["depth", "point"])["point"].drop_duplicates().tolist()
    return (alt.Chart(frame).mark_rect()
            .encode(x=alt.X("step:O", title="optimizer step (count)",
                            axis=alt.Axis(labelOverlap=True)),
                    y=alt.Y("point:N", sort=points, title="probed point (embeddings to logits)"),
                    color=alt.Color("value:Q", scale=alt.Scale(scheme="viridis"),
                                    title="statistic (unit of the probed value)"),
                    tooltip=["run_id:N", "point:N", "kind:N", "stat:N", "step:Q",
                             alt.Tooltip("value:Q", format=".4g")])
            .add_params(run, stat, kind)
            .transform_filter((alt.datum.run_id == run) & (alt.datum.stat == stat)
                              & (alt.datum.kind == kind))
            .properties(width=760, height=max(120, 22 * len(points))))


# (field, title, colour scale): the accuracy on [0, 1]; the controls' differences on [-1, 1],
# centred on 0 where the probe reads no more than its control
LINEAR_PANELS = [
    ("accuracy", "probe accuracy", alt.Scale(domain=[0, 1], scheme="blues")),
    ("selectivity", "selectivity: accuracy - control-task accuracy (Hewitt & Liang)",
     alt.Scale(domain=[-1, 1], scheme="redblue", reverse=True)),
    ("beyond_next_token", "accuracy - next-token baseline (what the probe reads beyond the "
     "next token)", alt.Scale(domain=[-1, 1], scheme="redblue", reverse=True)),
]
TOOLTIP_FIELDS = ["accuracy", "chance", "control_next_token_accuracy", "control_task_accuracy",
                  "selectivity", "beyond_next_token"]


def linear_heatmap(frame: pd.DataFrame) -> alt.TopLevelMixin:
    runs = sorted(frame["run_id"].unique())
    attributes = ["mean of attributes"] + sorted(set(frame["attribute"]) - {"mean of attributes"})
    run, attribute = _dropdown("lp_run", runs, "run "), _dropdown("attribute", attributes,
                                                                   "attribute ")
    frame = frame.assign(checkpoint_label=[
        "final" if c == "final" else str(s) for c, s in zip(frame["checkpoint"], frame["step"])])
    order = (frame.sort_values("step")["checkpoint_label"].drop_duplicates().tolist())
    tooltip = ["run_id:N", "attribute:N", "layer:Q", "checkpoint:N"] + [
        alt.Tooltip(f"{f}:Q", format=".3f") for f in TOOLTIP_FIELDS if f in frame]
    panels = []
    for field, title, scale in LINEAR_PANELS:
        if field not in frame or frame[field].isna().all():
            continue  # probe files written before the controls: accuracy only
        base = (alt.Chart(title=title)  # the data is the top-level chart's, once for all panels
                .transform_filter((alt.datum.run_id == run) & (alt.datum.attribute == attribute)
                                  & alt.expr.isValid(alt.datum[field]))
                .encode(x=alt.X("checkpoint_label:O", sort=order, title="checkpoint (step)"),
                        y=alt.Y("layer:O", sort="descending", title="layer (0 = embeddings)")))
        cells = base.mark_rect().encode(color=alt.Color(f"{field}:Q", scale=scale, title=None),
                                        tooltip=tooltip)
        dark = alt.datum[field] > 0.6 if field == "accuracy" else \
            (alt.datum[field] > 0.6) | (alt.datum[field] < -0.6)
        text = base.mark_text(fontSize=10).encode(
            text=alt.Text(f"{field}:Q", format=".2f"),
            color=alt.condition(dark, alt.value("white"), alt.value("black")))
        panels.append((cells + text).properties(width=min(760, 60 * len(order) + 80),
                                                height=220))
    # the dropdowns live on the top-level chart so that every panel filters on the same choice
    chart = alt.vconcat(*panels, data=frame).resolve_scale(color="independent") \
        if len(panels) > 1 else panels[0].properties(data=frame)
    return chart.add_params(run, attribute)


def build(src: Source) -> Page:
    page = Page("probes", "Probes")
    if src.empty:
        page.add(NO_RUNS)
        return page
    page.add("<h2>Inside the network while it trains</h2>")
    frame = src.df(PROBES_SQL) if src.has("probes") else pd.DataFrame()
    if frame.empty:
        page.add("<p>No probe records: train with <code>train.probes.enabled: true</code> "
                 "(lmpipe/train/probes.py).</p>")
    else:
        page.add(howto("Each row is a probed point (embeddings at the top, then each block's "
                       "sites: llama's attention output, attention-weight entropy and MLP "
                       "output, or a recurrent model's mixer output (Mamba's SSM, Hawk's RG-LRU "
                       "block) and, for Hawk, MLP output; then the residual stream after the "
                       "block; the logits last), each column a recorded step. Pick the run, the "
                       "statistic and forward values or gradients. A residual stream whose RMS "
                       "keeps growing, gradients that vanish in early layers, or attention whose "
                       "entropy collapses to 0 (one key) all show as bands."))
        page.chart("probes", probe_heatmap(frame))
    page.add("<h2>Linear probes: where the facts become readable</h2>")
    linear = src.df(linear_sql(src.has("linear_probes", *CONTROL_COLUMNS))) \
        if src.has("linear_probes") else pd.DataFrame()
    if linear.empty:
        page.add("<p>No linear probes yet: <code>lmpipe probe runs/&lt;run&gt;</code>.</p>")
    else:
        page.add(howto("Accuracy of a linear classifier that reads an attribute from the hidden "
                       "state at the last token of a person's name, trained on some people and "
                       "tested on others, per layer and checkpoint. Compare with the chance level "
                       "in the tooltip (always guessing the most common value) and with the "
                       "controls below it: selectivity is the accuracy less that of the same "
                       "probe trained on random labels fixed per person (with people split, "
                       "about chance); the last heatmap is the accuracy less that of a classifier "
                       "that sees only the next token (at <code>--context answer</code>, the "
                       "answer's first token). Only what survives the last one is more than the "
                       "next token."))
        page.chart("linear_probes", linear_heatmap(linear))
        page.add(note("Checkpoint 'final' is the saved model."))
    return page
