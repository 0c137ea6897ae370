"""scaling.html's first section: knowledge bits against parameters, log-log, with the 2 bits/param
line of Physics of Language Models 3.3; one panel per architecture when the models differ in it."""

from __future__ import annotations

import altair as alt
import pandas as pd

from lmpipe.report import units
from lmpipe.report.page import Page, howto, note
from lmpipe.report.scaling_data import archs_of

BITS_PER_PARAM = 2.0
MAX_NAMED = 12       # the knowledge chart names its points when outside a sweep and this few


def _facts_color(values: pd.Series) -> alt.Color:
    distinct = sorted(values.dropna().unique())
    if len(distinct) <= 10:
        return alt.Color("facts:O", title="facts (people × 6)", sort=distinct,
                         scale=alt.Scale(scheme="viridis"))
    return alt.Color("facts:Q", title="facts (people × 6)",
                     scale=alt.Scale(type="log", scheme="viridis"))


def knowledge_chart(models: pd.DataFrame, title: str = "knowledge bits against parameters",
                    width: int = 620) -> alt.TopLevelMixin:
    """Knowledge bits against parameters, log-log, with the 2 bits/param line."""
    low, high = models["parameters"].min() / 1.5, models["parameters"].max() * 1.5
    line = pd.DataFrame({"parameters": [low, high], "bits": [BITS_PER_PARAM * low,
                                                             BITS_PER_PARAM * high]})
    x = alt.X("parameters:Q", title=units.title("parameters", log=True),
              scale=alt.Scale(type="log"))
    y = alt.Y("knowledge_bits:Q", title=units.title("knowledge_bits", log=True),
              scale=alt.Scale(type="log"))
    reference = alt.Chart(line).mark_line(color="#888", strokeDash=[6, 4]).encode(
        x=alt.X("parameters:Q", scale=alt.Scale(type="log")),
        y=alt.Y("bits:Q", scale=alt.Scale(type="log")))
    text = alt.Chart(line.tail(1)).mark_text(align="right", dx=-4, dy=-8, color="#555").encode(
        x="parameters:Q", y="bits:Q", text=alt.value(f"{BITS_PER_PARAM:g} bits/param"))
    points = alt.Chart(models).mark_point(filled=True, size=70, opacity=0.85).encode(
        x=x, y=y, color=_facts_color(models["facts"]),
        shape=alt.Shape("mode:N", title="mode"),
        tooltip=[alt.Tooltip("run_id:N", title="eval run"), "model:N", "arch:N",
                 alt.Tooltip("where:N", title="sweep point"), "mode:N",
                 alt.Tooltip("parameters:Q", format=","), alt.Tooltip("facts:Q", format=","),
                 alt.Tooltip("knowledge_bits:Q", format=",.1f"),
                 alt.Tooltip("bits_per_param:Q", format=".4f")])
    layers = [reference, text, points]
    named = models[models["where"] == "–"]  # the default run's models: few, each named
    if 0 < len(named) <= MAX_NAMED:
        # one label per parameter count, its models top to bottom as their points: models of one
        # size (the student and its distilled and quantized versions) would overprint each other
        labels = (named.sort_values("knowledge_bits", ascending=False)
                  .groupby("parameters", as_index=False)["knowledge_bits"].max())
        labels["text"] = [
            "\n".join(f"{m}: {b:,.0f}" for m, b in named.loc[named["parameters"] == p]
                      .sort_values("knowledge_bits", ascending=False)[["model", "knowledge_bits"]]
                      .itertuples(index=False))
            for p in labels["parameters"]]
        layers.append(alt.Chart(labels).mark_text(
            align="left", baseline="top", dx=8, dy=-6, fontSize=10, color="#333",
            lineBreak="\n").encode(x=x, y=y, text="text:N"))
    return alt.layer(*layers).properties(width=width, height=400, title=title)


def add_knowledge(page: Page, models: pd.DataFrame) -> None:
    """The knowledge section of the page for `models` (scaling_data.load), or why it is empty."""
    page.add("<h2>Knowledge bits against parameters</h2>")
    if models.empty:
        page.add("<p>No eval run has reported <code>parameters</code> for a model yet: run the "
                 "eval stage (or a sweep), then <code>lmpipe index</code>.</p>")
    bits = models[models["knowledge_bits"].notna()] if not models.empty else models
    if not models.empty and bits.empty:
        page.add("<p>No evaluated model has <code>knowledge_bits</code> yet.</p>")
    elif not bits.empty:
        positive = bits[(bits["knowledge_bits"] > 0) & (bits["parameters"] > 0)].assign(
            bits_per_param=lambda f: f["knowledge_bits"] / f["parameters"])
        dropped = len(bits) - len(positive)
        if positive.empty:
            page.add(f"<p>All {len(bits)} evaluated models store 0 knowledge bits (a world that "
                     "trains tool use, not recall, stores nothing in the weights): nothing to draw "
                     "on a log scale.</p>")
        else:
            archs = archs_of(positive)
            if len(archs) > 1:
                # side by side on shared axes: one arch's capacity beside another's
                page.chart("knowledge", alt.hconcat(*(
                    knowledge_chart(positive[positive["arch"] == a],
                                    f"knowledge bits against parameters: {a}", width=330)
                    for a in archs)).resolve_scale(x="shared", y="shared", color="shared",
                                                   shape="shared"))
            else:
                page.chart("knowledge", knowledge_chart(positive))
            if dropped:
                page.add(note(f"{dropped} of {len(bits)} models store 0 bits and are not drawn "
                              "(log scale)."))
            page.add(howto(
                "Each point is one evaluated model: the bits of the world's facts it holds in its "
                "weights (for each attribute, N·log2|values| minus the model's cross-entropy in "
                "bits on the answers, floored at 0, summed) against its parameter count, both on "
                "log scales. Colour is the number of facts the model was trained on (people × 6 "
                "attributes), shape the training mode. The dashed line is 2 bits per parameter, "
                "the capacity Physics of Language Models 3.3 measured: a model on the line is "
                "full; a column of points (one size) that rises with the facts still has room, one "
                "that stops rising has reached its capacity."))
