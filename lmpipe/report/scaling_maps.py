"""scaling.html's accuracy maps: accuracy over (parameters, facts) with and without the tool, as
contour panels (the lattice math is `lmpipe.report.contours`) with a table per lattice.

The map is drawn only from comparable models: those of one kind (the model's name in its eval
run, `map_kind`), and only when they span a lattice of at least two parameter counts by two fact
counts, as a sweep does. A lattice node measured more than once is then only ever the replicates
of one model (a sweep with `seeds`): it shows their mean, and their lowest and highest measurement
in the tooltip and the table. Architectures are never averaged: one map per arch.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from lmpipe.report import contours, units
from lmpipe.report.page import Page, esc, fmt_spread, howto, note, table
from lmpipe.report.scaling_data import MODEL_RANK, PANELS, archs_of

# models made from another model rather than trained at their size: not comparable with the
# models trained from scratch on a capacity map
DERIVED = {"distilled", "quantized", "quantized_ptq", "int8"}
ACCURACY_SCHEME = "yellowgreenblue"


def map_kind(models: pd.DataFrame) -> str | None:
    """The kind of model (its name in the eval run) the accuracy map is drawn from, or None when
    no kind spans a lattice (two parameter counts and two fact counts at least).

    Only models of one kind are comparable on the map: the default run evaluates a teacher, a
    scratch student and, at the student's size, distilled and quantized versions of it, which
    averaged into one cell would be no model at all. Models trained from scratch come first,
    then the kind whose lattice has the most nodes."""
    placed = models[models["facts"].notna() & (models["parameters"] > 0)
                    & (models["recall"].notna() | models["tool_accuracy"].notna())]
    best, best_key = None, None
    for kind, rows in placed.groupby("model"):
        nx, ny = rows["parameters"].nunique(), rows["facts"].nunique()
        if nx < 2 or ny < 2:
            continue
        key = (kind not in DERIVED, nx * ny, -MODEL_RANK.get(kind, len(MODEL_RANK)))
        if best_key is None or key > best_key:
            best, best_key = kind, key
    return best


def add_maps(page: Page, models: pd.DataFrame, kind: str | None) -> bool:
    """The accuracy maps of the `kind` models (`map_kind`), one per architecture; whether any
    was drawn."""
    on_map = models["model"] == kind
    if kind is not None:
        page.add("<h2>Accuracy over parameters × facts, with and without the tool</h2>")
    archs = archs_of(models[on_map])
    mapped = False
    # one map per arch: a cell averaging an attention model with a recurrent one of the same size
    # would be no model at all
    for arch in archs if kind is not None else []:
        panels, infos = [], []
        for key, column, world, title in PANELS:
            subset = models[on_map & (models["arch"] == arch) & models[world]
                            & models[column].notna() & models["facts"].notna()
                            & (models["parameters"] > 0)]
            if subset.empty:
                infos.append((key, title, None))
                continue
            chart, info = contour_panel(subset, column,
                                        title if len(archs) == 1 else f"{arch}: {title}")
            panels.append(chart)
            infos.append((key, title, info))
        if panels:
            add_map(page, kind, panels, infos, arch if len(archs) > 1 else None,
                    explain=not mapped)
            mapped = True
    return mapped


def contour_panel(models: pd.DataFrame, column: str, title: str) -> tuple[alt.LayerChart, dict]:
    """Heatmap cells, contour lines with level labels, and measured points for one accuracy."""
    where = (models["parameters"].to_numpy(), models["facts"].to_numpy(),
             models[column].to_numpy())
    lx, ly, mean, count = contours.lattice(*where)
    low, high = contours.lattice_range(*where) if count.size and count.max() > 1 else (None, None)
    cells = contours.cells(lx, ly, mean, count, low, high)
    lines = contours.contour_lines(lx, ly, mean)
    labels = contours.line_labels(lines)
    # the panel spans the lattice's cells exactly (no "nice" padding to whole decades)
    x_scale = alt.Scale(type="log", nice=False, domain=[cells["x"].min(), cells["x2"].max()])
    y_scale = alt.Scale(type="log", nice=False, domain=[cells["y"].min(), cells["y2"].max()])
    color = alt.Color("value:Q", title="accuracy (fraction correct)",
                      scale=alt.Scale(domain=[0, 1], scheme=ACCURACY_SCHEME))
    tooltip = [alt.Tooltip("xc:Q", title="parameters", format=","),
               alt.Tooltip("yc:Q", title="facts", format=","),
               alt.Tooltip("value:Q", title="mean accuracy", format=".3f"),
               alt.Tooltip("n:Q", title="models")]
    if low is not None:
        tooltip[3:3] = [alt.Tooltip("lo:Q", title="min", format=".3f"),
                        alt.Tooltip("hi:Q", title="max", format=".3f")]
    layers = [alt.Chart(cells).mark_rect(opacity=0.9, stroke="white", strokeWidth=0.5).encode(
        x=alt.X("x:Q", title=units.title("parameters", log=True), scale=x_scale), x2="x2:Q",
        y=alt.Y("y:Q", title="facts = people × 6 (count, log scale)", scale=y_scale), y2="y2:Q",
        color=color, tooltip=tooltip)]
    if not lines.empty:
        # dark lines and labels over a white halo, readable on light and dark cells alike
        for stroke, width, opacity in (("white", 4.0, 0.8), ("#111", 1.6, 1.0)):
            layers.append(alt.Chart(lines).mark_line(color=stroke, strokeWidth=width,
                                                     opacity=opacity).encode(
                x=alt.X("x:Q", scale=x_scale), y=alt.Y("y:Q", scale=y_scale), detail="line:N",
                order="order:Q", tooltip=[alt.Tooltip("level:Q", title="contour")]))
        for extra in ({"stroke": "white", "strokeWidth": 3, "strokeOpacity": 0.9}, {}):
            layers.append(alt.Chart(labels).mark_text(
                fontWeight="bold", fontSize=12, color="#111", dy=-8, **extra).encode(
                x=alt.X("x:Q", scale=x_scale), y=alt.Y("y:Q", scale=y_scale), text="text:N"))
    measured = models.dropna(subset=[column])
    layers.append(alt.Chart(measured).mark_point(filled=True, color="white", stroke="#222",
                                                 strokeWidth=1, size=30).encode(
        x=alt.X("parameters:Q", scale=x_scale), y=alt.Y("facts:Q", scale=y_scale),
        tooltip=[alt.Tooltip("run_id:N", title="eval run"), "model:N",
                 alt.Tooltip("where:N", title="sweep point"), "mode:N",
                 alt.Tooltip("parameters:Q", format=","), alt.Tooltip("facts:Q", format=","),
                 alt.Tooltip(f"{column}:Q", title="accuracy", format=".4f")]))
    info = {"nodes": (len(lx), len(ly)), "measured": int((count > 0).sum()),
            "missing": int((count == 0).sum()), "models": len(measured),
            "lines": lines["level"].nunique() if not lines.empty else 0,
            "spread": low is not None,
            "grid": _grid_table(lx, ly, mean, count, low, high)}
    return alt.layer(*layers).properties(width=430, height=340, title=title), info


def _grid_table(lx: np.ndarray, ly: np.ndarray, mean: np.ndarray, count: np.ndarray,
                low: np.ndarray | None = None, high: np.ndarray | None = None) -> pd.DataFrame:
    """facts (rows, largest first) × parameters (columns) mean accuracy, for exact reading; a
    cell measured more than once also gives its lowest and highest, "mean (min–max)"."""
    low = mean if low is None else low
    high = mean if high is None else high
    three = "{:.3f}".format
    text = [[fmt_spread(mean[j, i], low[j, i], high[j, i], count[j, i], three)
             for i in range(len(lx))] for j in range(len(ly))]
    frame = pd.DataFrame(text, index=[f"{10 ** v:,.0f}" for v in ly],
                         columns=[f"{10 ** v:,.0f}" for v in lx])
    frame = frame.iloc[::-1]
    frame.index.name = "facts \\ parameters"
    return frame.reset_index()


def add_map(page: Page, kind: str, panels: list[alt.LayerChart], infos: list[tuple],
            arch: str | None = None, explain: bool = True) -> None:
    """The accuracy map of the `kind` models (one panel with the tool, one without), its notes,
    how to read it and its lattice tables; `arch`: the map is that architecture's, one of
    several on the page (its chart `contours-<arch>`); `explain`: add how to read it (once a
    page)."""
    prefix = f"{arch}: " if arch is not None else ""
    chart = alt.hconcat(*panels).resolve_scale(color="shared")
    if arch is not None:
        page.add(f"<h3>{esc(arch)}</h3>")
    page.chart("contours" if arch is None else f"contours-{arch}", chart)
    what = esc(kind) if arch is None else f"{esc(kind)} [{esc(arch)}]"
    page.add(note(f"The map is drawn from the <em>{what}</em> models only: models of one "
                  "kind, trained the same way, so that a cell averages only replicates."))
    for key, title, info in infos:
        if info is None:
            what = ("trained with tool dialogs (world.tool_dialogs)" if key == "tool"
                    else "trained with question/answer dialogs (world.qa_dialogs)")
            page.add(note(f"<em>{prefix}{title}</em>: no model {what} has this accuracy yet."))
            continue
        nx, ny = info["nodes"]
        text = (f"<em>{prefix}{title}</em>: {info['models']} models on a {nx} × {ny} lattice of "
                f"(parameters, facts), {info['measured']} cells measured, "
                f"{info['missing']} missing")
        if nx < 2 or ny < 2:
            text += "; contour lines need at least two parameter counts and two fact counts"
        elif not info["lines"]:
            text += "; no contour level is crossed"
        page.add(note(text + "."))
    if explain:
        add_map_howto(page)
    for key, title, info in infos:
        if info is not None and len(info["grid"]) <= 16 and len(info["grid"].columns) <= 17:
            spread = " (min–max where measured more than once)" if info["spread"] else ""
            page.add(f"<h3>{esc(prefix)}{title}: mean accuracy per lattice cell{spread}</h3>",
                     table(info["grid"]))


def add_map_howto(page: Page) -> None:
    """How to read the accuracy map."""
    page.add(howto(
        "Each panel is a map of accuracy over model size (x, parameters) and world size (y, "
        "facts = people × 6), both on log scales. The coloured cells are the measured lattice "
        "(the mean of the models at each node; a blank cell was not measured); the dark lines are "
        f"contour lines at accuracy {', '.join(f'{v:g}' for v in contours.LEVELS)}, interpolated "
        "linearly in log-parameters and log-facts between neighbouring nodes; the dots are the "
        "measured models (hover for the run). <em>With the tool</em>: answering by querying the "
        "database tool; <em>without the tool</em>: answering from the weights alone. Without the "
        "tool, accuracy falls as facts grow at a fixed size and the contour lines run diagonally "
        "(twice the parameters hold twice the facts); with the tool, accuracy should not depend "
        "on the number of facts, so its lines run vertically (only size matters) or are absent "
        "(every size answers). Compare where the 0.5 line sits in the two panels."))
