"""scaling.html's per-model chart: every model not on the accuracy map (all of them on the default
run, where the distilled, QAT, PTQ and int8 models share the scratch student's size) as one
labelled point of its own, with and without the tool; the label names its arch when the models
differ in it."""

from __future__ import annotations

import altair as alt
import pandas as pd

from lmpipe.core.archs import DEFAULT_ARCH
from lmpipe.report import units
from lmpipe.report.page import Page, esc, howto, note
from lmpipe.report.scaling_data import MODEL_ORDER, PANELS

MAX_MODEL_ROWS = 40   # the per-model chart shows at most this many (group, model) rows


def model_rows(models: pd.DataFrame) -> pd.DataFrame:
    """One row per (group of replicates, model, measure) for the per-model chart: the accuracy's
    mean, lowest and highest over the replicates, and a label naming the model and its size."""
    rows = []
    for key, column, world, title in PANELS:
        subset = models[models[world] & models[column].notna()]
        for (group, model), g in subset.groupby(["group_id", "model"], sort=False):
            rows.append({"group": group, "model": model, "panel": title,
                         "arch": g["arch"].iloc[0] if "arch" in g else DEFAULT_ARCH,
                         "value": g[column].mean(), "lo": g[column].min(), "hi": g[column].max(),
                         "n": len(g), "parameters": g["parameters"].iloc[0],
                         "facts": g["facts"].iloc[0]})
    frame = pd.DataFrame(rows, columns=["group", "model", "panel", "arch", "value", "lo", "hi",
                                        "n", "parameters", "facts"])
    several = frame["group"].nunique() > 1
    archs = frame["arch"].nunique() > 1  # name the arch only when it tells models apart
    frame["label"] = [f"{m}{f' [{a}]' if archs else ''} ({p:,.0f} params)"
                      + (f" · {g}" if several else "")
                      for m, a, p, g in zip(frame["model"], frame["arch"], frame["parameters"],
                                            frame["group"])]
    frame["text"] = [f"{v:.3f}" if n <= 1 or lo == hi else f"{v:.3f} ({lo:.3f}–{hi:.3f})"
                     for v, lo, hi, n in zip(frame["value"], frame["lo"], frame["hi"], frame["n"])]
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    frame["rank"] = [order.get(m, len(order)) for m in frame["model"]]
    return frame.sort_values(["group", "rank", "model"], kind="stable").reset_index(drop=True)


def model_chart(rows: pd.DataFrame) -> alt.TopLevelMixin:
    """Accuracy per model, one labelled point each (a whisker from the lowest to the highest
    replicate when there are several), one panel with the tool and one without."""
    labels = list(dict.fromkeys(rows["label"]))
    kinds = list(dict.fromkeys(rows["model"]))  # colours in model order, as on distillation.html
    panels = []
    for key, column, world, title in PANELS:
        data = rows[rows["panel"] == title]
        if data.empty:
            continue
        y = alt.Y("label:N", sort=labels, title="model (parameters)")
        x = alt.X("value:Q", title=units.title(column), scale=alt.Scale(domain=[0, 1]))
        tooltip = [alt.Tooltip("group:N", title="eval run"), "model:N", "arch:N",
                   alt.Tooltip("parameters:Q", format=","), alt.Tooltip("facts:Q", format=","),
                   alt.Tooltip("value:Q", title="mean accuracy", format=".4f"),
                   alt.Tooltip("lo:Q", title="min", format=".4f"),
                   alt.Tooltip("hi:Q", title="max", format=".4f"), alt.Tooltip("n:Q", title="runs")]
        layers = [alt.Chart().mark_rule(color="#555").encode(y=y, x=alt.X("lo:Q"), x2="hi:Q"),
                  alt.Chart().mark_point(filled=True, size=80).encode(
                      y=y, x=x, color=alt.Color("model:N", title="model", legend=None,
                                                sort=kinds),
                      tooltip=tooltip),
                  alt.Chart().mark_text(align="left", dx=8, fontSize=11).encode(
                      y=y, x=alt.X("hi:Q"), text="text:N")]
        panels.append(alt.layer(*layers, data=data).properties(
            width=330, height=max(60, 24 * data["label"].nunique()), title=title))
    return alt.hconcat(*panels)


def add_model_chart(page: Page, models: pd.DataFrame, mapped: str | None) -> None:
    """The per-model accuracy chart for the models not on the map (all of them when no kind spans
    a lattice, as on the default run), with what it shows."""
    rows = model_rows(models)
    if rows.empty:
        return
    page.add("<h2>Accuracy per model, with and without the tool</h2>")
    groups = rows[["group", "model"]].drop_duplicates()
    if len(groups) > MAX_MODEL_ROWS:
        keep = groups.head(MAX_MODEL_ROWS)
        rows = rows.merge(keep, on=["group", "model"])
        page.add(note(f"The first {MAX_MODEL_ROWS} of {len(groups)} models; "
                      "<code>lmpipe query</code> lists them all."))
    page.chart("models", model_chart(rows))
    why = (f"They are not on the map above, which shows the <em>{esc(mapped)}</em> models only."
           if mapped else
           "No kind of model spans two parameter counts and two fact counts, so there is no map "
           "to draw: a cell would average different models (a scratch student with its distilled "
           "and quantized versions, all of one size) into a number no model has.")
    page.add(howto(
        "One labelled point per model: its accuracy on the trained people with the tool (left) "
        "and without it (right, recall from the weights alone), on a 0–1 axis; the label gives "
        "the value" + (" and, over replicates, the lowest and highest in brackets, also drawn as "
                       "a whisker" if (rows["n"] > 1).any() else "") + ". " + why))
