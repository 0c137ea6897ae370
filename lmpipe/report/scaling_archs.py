"""scaling.html's architecture comparison: accuracy against parameters, one line per architecture,
drawn when the evaluated models differ in `model.arch` (recipes/in-tool-learning/archs.yaml).

Three measures, a panel each, each a question the arch axis asks:

    tool accuracy, trained people    can the model learn to query the database and copy the answer?
    tool accuracy, held-out people   does that skill hold for people it never saw in training?
    recall, trained people           what does it answer from its weights alone, without the tool?

A point is one group of replicates (the same configuration over seeds, `Source.run_groups`): the
mean over its runs, with a whisker from the lowest to the highest. Points of one arch and one world
(training mode and number of facts) are joined by a line across parameter counts; a line never
joins two archs or two worlds, and nothing is averaged across them. Only one kind of model (the
sweep's: the teacher a point trains, or the most common kind) is drawn, so that a distilled or
quantized model does not sit on its scratch twin's line.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from lmpipe.report.page import Page, fmt_spread, howto, table
from lmpipe.report.scaling_data import MODEL_RANK, archs_of

# (accuracy column, the models that count (their world trained it), panel title)
MEASURES = [
    ("tool_accuracy", "tool_world", "tool accuracy, trained people"),
    ("heldout_tool_accuracy", "tool_world", "tool accuracy, held-out people"),
    ("recall", None, "recall without the tool, trained people"),
]


def arch_rows(models: pd.DataFrame) -> pd.DataFrame:
    """One row per (group of replicates, measure) of the compared kind of model: arch, world,
    parameters, and the measure's mean, lowest and highest over the group's runs."""
    if "arch" not in models or models["arch"].nunique() < 2:
        return pd.DataFrame()
    kinds = models["model"].value_counts()
    # the sweep's own model: the most evaluated kind, the earlier in MODEL_RANK on a tie
    kind = min(kinds.index, key=lambda k: (-kinds[k], MODEL_RANK.get(k, len(MODEL_RANK))))
    chosen = models[models["model"] == kind]
    rows = []
    for column, world, title in MEASURES:
        if column not in chosen:
            continue
        subset = chosen[chosen[column].notna() & (chosen[world] if world else True)]
        for group, g in subset.groupby("group_id", sort=False):
            facts = g["facts"].iloc[0]
            rows.append({
                "group": group, "model": kind, "arch": g["arch"].iloc[0], "measure": title,
                "world": f"{g['mode'].iloc[0]}"
                         + (f", {facts:,.0f} facts" if pd.notna(facts) else ""),
                "parameters": g["parameters"].mean(), "value": g[column].mean(),
                "lo": g[column].min(), "hi": g[column].max(), "n": len(g)})
    return pd.DataFrame(rows)


def arch_chart(rows: pd.DataFrame) -> alt.TopLevelMixin:
    """Accuracy against parameters (log axis), a colour per arch, a panel per measure (and a row
    per world when there are several)."""
    archs = archs_of(rows)
    color = alt.Color("arch:N", title="architecture", sort=archs)
    x = alt.X("parameters:Q", title="parameters", scale=alt.Scale(type="log", nice=False,
                                                                   zero=False))
    y = alt.Y("value:Q", title="accuracy (mean over seeds)", scale=alt.Scale(domain=[0, 1]))
    tooltip = ["arch:N", "world:N", alt.Tooltip("parameters:Q", format=","),
               alt.Tooltip("value:Q", title="mean", format=".4f"),
               alt.Tooltip("lo:Q", title="min", format=".4f"),
               alt.Tooltip("hi:Q", title="max", format=".4f"), alt.Tooltip("n:Q", title="runs"),
               alt.Tooltip("group:N", title="eval run")]
    # one line per (arch, world): `detail` keeps two worlds of one arch apart
    line = alt.Chart().mark_line(point=alt.OverlayMarkDef(filled=True, size=70)).encode(
        x=x, y=y, color=color, detail="world:N", tooltip=tooltip)
    whisker = alt.Chart().mark_rule().encode(x=x, y=alt.Y("lo:Q"), y2="hi:Q", color=color)
    panels = alt.layer(whisker, line, data=rows).properties(width=260, height=220)
    row = alt.Row("world:N", title=None) if rows["world"].nunique() > 1 else alt.Undefined
    return panels.facet(column=alt.Column("measure:N", title=None,
                                          sort=[title for _, _, title in MEASURES]), row=row)


def add_arch_comparison(page: Page, models: pd.DataFrame) -> None:
    """The architecture comparison (module docstring) with its table, when the models differ in
    arch; nothing otherwise."""
    rows = arch_rows(models)
    if rows.empty:
        return
    page.add("<h2>Architectures compared: accuracy against parameters</h2>")
    page.chart("archs", arch_chart(rows))
    kind = rows["model"].iloc[0]
    page.add(howto(
        f"Each point is one configuration of the <em>{kind}</em> models, the mean over its "
        "replicates (seeds), with a whisker from the lowest to the highest; a colour per "
        "architecture, a line joining the sizes of one architecture in one world. Left: tool "
        "accuracy on trained people (did it learn to look facts up and copy them?); middle: the "
        "same on held-out people, whose facts only the database has; right: recall of trained "
        "people's facts without the tool, from the weights alone. At matched parameter counts a "
        "gap between the lines is the architecture's, not the size's."))
    wide = rows.assign(figure=[fmt_spread(v, lo, hi, n, number=lambda x: f"{x:.3f}")
                               for v, lo, hi, n in zip(rows["value"], rows["lo"], rows["hi"],
                                                       rows["n"])])
    wide = wide.pivot_table(index=["arch", "world", "parameters", "n"], columns="measure",
                            values="figure", aggfunc="first").reset_index()
    wide.columns.name = None
    order = {a: i for i, a in enumerate(archs_of(rows))}
    wide = wide.sort_values(["world", "arch", "parameters"],
                            key=lambda c: c.map(order) if c.name == "arch" else c)
    wide["parameters"] = [f"{p:,.0f}" for p in wide["parameters"]]
    columns = ["arch", "world", "parameters", "n"] + [t for _, _, t in MEASURES if t in wide]
    page.add(table(wide[columns].rename(columns={"n": "runs"})))
    page.add(howto("Each cell: the share of questions answered exactly, the mean over the runs "
                   "and, in brackets, the lowest and highest replicate."))
