"""scaling.html: how much a model of N parameters knows, and how accuracy with and without the
tool changes over (parameters, number of facts).

Every evaluated model is one point, from the eval stage's overall rows (`evals`, attribute null,
step null): its `parameters`, `knowledge_bits` (trained split), `recall` and `tool_accuracy`
(trained people), joined to the eval run's world (`params`: world.people, world.tool_dialogs,
world.qa_dialogs) and, in a sweep, its point's `mode`. Facts = people × the six attributes. Within a
sweep only the latest eval run of each point and model counts (a retried point is not counted
twice).

The accuracy map (contour panels drawn by `lmpipe.report.contours`) is drawn only from comparable
models: those of one kind (the model's name in its eval run, `map_kind`), and only when they span
a lattice of at least two parameter counts by two fact counts, as a sweep does. A lattice node
measured more than once is then only ever the replicates of one model (a sweep with `seeds`): it
shows their mean, and their lowest and highest measurement in the tooltip and the table. Every
model not on the map (all of them on the default run, where the distilled, QAT, PTQ and int8
models share the scratch student's size) is one labelled point of its own in a per-model chart.

Architectures (`model.arch`: llama, mamba, hawk) are compared side by side, never averaged: each
model's arch is its section's (`teacher.model.arch` for the teacher, `student.model.arch` for the
student and the models made from it; a point's override first, llama when the run does not say,
as a llama section's dump omits it). When the models differ in arch, the knowledge chart and the
accuracy map get one panel per arch and the per-model chart names each model's arch
(recipes/in-tool-learning/archs.yaml sweeps them at matched parameter counts).
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lmpipe.core.protocol import ATTRIBUTES
from lmpipe.report import contours, units
from lmpipe.report.page import NO_RUNS, Page, esc, fmt_spread, howto, note, table
from lmpipe.report.source import Source, label, parse_json

BITS_PER_PARAM = 2.0
# models made from another model rather than trained at their size: not comparable with the
# models trained from scratch on a capacity map
DERIVED = {"distilled", "quantized", "quantized_ptq", "int8"}
MODEL_ORDER = ["teacher", "student", "model", "distilled", "quantized", "quantized_ptq", "int8"]
MODEL_RANK = {m: i for i, m in enumerate(MODEL_ORDER)}
MAX_NAMED = 12       # the knowledge chart names its points when outside a sweep and this few
MAX_MODEL_ROWS = 40   # the per-model chart shows at most this many (group, model) rows
DEFAULT_ARCH = "llama"  # a run that does not name its arch (every run before issue 19) is llama
ACCURACY_SCHEME = "yellowgreenblue"

MODELS_SQL = """
WITH overall AS (
    SELECT run_id, model,
           avg(value) FILTER (WHERE metric = 'parameters') AS parameters,
           avg(value) FILTER (WHERE metric = 'knowledge_bits'
                              AND coalesce(split, 'trained') = 'trained') AS knowledge_bits,
           avg(value) FILTER (WHERE metric = 'recall' AND split = 'trained') AS recall,
           max(n) FILTER (WHERE metric = 'recall' AND split = 'trained') AS recall_n,
           avg(value) FILTER (WHERE metric = 'tool_accuracy' AND split = 'trained')
               AS tool_accuracy,
           max(n) FILTER (WHERE metric = 'tool_accuracy' AND split = 'trained') AS tool_n
    FROM evals
    WHERE attribute IS NULL AND {stage_rows} AND isfinite(value)
      AND metric IN ('parameters', 'knowledge_bits', 'recall', 'tool_accuracy')
    GROUP BY run_id, model
), world AS (
    SELECT run_id,
           any_value(TRY_CAST(value AS DOUBLE)) FILTER (WHERE key = 'world.people') AS people,
           any_value(value) FILTER (WHERE key = 'world.tool_dialogs') AS tool_dialogs,
           any_value(value) FILTER (WHERE key = 'world.qa_dialogs') AS qa_dialogs
    FROM params WHERE key IN ('world.people', 'world.tool_dialogs', 'world.qa_dialogs')
    GROUP BY run_id
)
SELECT o.*, w.people, w.tool_dialogs, w.qa_dialogs, r.started_at, {point_columns}
FROM overall o JOIN runs r USING (run_id) LEFT JOIN world w USING (run_id)
WHERE o.parameters IS NOT NULL
ORDER BY r.started_at NULLS FIRST, o.run_id, o.model
"""

# (panel key, accuracy column, the models that count (their world trained this), title)
PANELS = [
    ("tool", "tool_accuracy", "tool_world", "with the tool: tool accuracy, trained people"),
    ("recall", "recall", "qa_world", "without the tool: recall, trained people"),
]


def _flag(text: Any) -> bool | None:
    value = parse_json(text)
    return value if isinstance(value, bool) else None


def _mode(tool: bool | None, qa: bool | None) -> str:
    if tool is None and qa is None:
        return "unknown"
    return {(True, True): "tool + qa", (True, False): "tool", (False, True): "qa",
            (False, False): "neither"}[(bool(tool), bool(qa))]


def load(src: Source) -> pd.DataFrame:
    """One row per evaluated model: parameters, facts, mode, knowledge bits, accuracies."""
    in_sweep = src.has("runs", "sweep", "point")
    sql = MODELS_SQL.format(stage_rows=src.stage_rows(),
                            point_columns="r.sweep, r.point" if in_sweep
                            else "NULL AS sweep, NULL AS point")
    models = src.df(sql)
    if models.empty:
        return models
    # a retried sweep point: its latest eval run only (rows are ordered by start time)
    swept = models["sweep"].notna()
    models = pd.concat([models[~swept], models[swept].drop_duplicates(
        ["sweep", "point", "model"], keep="last")]).sort_index()
    point_people = src.param_per_run("world.people") if "world.people" in src.point_keys else {}
    point_mode = src.param_per_run("mode") if "mode" in src.point_keys else {}
    people = [p if pd.notna(p) else point_people.get(r) for r, p in zip(models["run_id"],
                                                                         models["people"])]
    models["facts"] = [float(p) * len(ATTRIBUTES) if isinstance(p, (int, float)) and pd.notna(p)
                       else np.nan for p in people]
    tool = [_flag(v) for v in models["tool_dialogs"]]
    qa = [_flag(v) for v in models["qa_dialogs"]]
    models["tool_world"] = [t is not False for t in tool]   # unknown counts as possible
    models["qa_world"] = [q is not False for q in qa]
    models["mode"] = [label(point_mode[r]) if r in point_mode else _mode(t, q)
                      for r, t, q in zip(models["run_id"], tool, qa)]
    models["where"] = [f"{s}/{p}" if isinstance(s, str) else "–"
                       for s, p in zip(models["sweep"], models["point"])]
    groups = dict(zip(src.run_groups["run_id"], src.run_groups["group_id"]))
    models["group_id"] = [groups.get(r, r) for r in models["run_id"]]
    models["arch"] = arch_column(src, models)
    return models.reset_index(drop=True)


def arch_column(src: Source, models: pd.DataFrame) -> list[str]:
    """Each model's architecture: the teacher's from `teacher.model.arch`, every other model's
    (the student and what is distilled or quantized from it) from `student.model.arch`."""
    sections = {"teacher": src.param_per_run("teacher.model.arch"),
                "student": src.param_per_run("student.model.arch")}
    return [label(sections["teacher" if model == "teacher" else "student"].get(run_id))
            or DEFAULT_ARCH for run_id, model in zip(models["run_id"], models["model"])]


def archs_of(models: pd.DataFrame) -> list[str]:
    """The architectures among `models`, llama first then in order of appearance."""
    found = list(dict.fromkeys(models["arch"])) if "arch" in models else []
    return sorted(found, key=lambda a: a != DEFAULT_ARCH)


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


def build(src: Source) -> Page:
    page = Page("scaling", "scaling")
    if src.empty:
        page.add(NO_RUNS)
        return page
    models = load(src)
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

    if models.empty:
        return page
    kind = map_kind(models)
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
    if not mapped and model_rows(models).empty:
        page.add("<p>No evaluated model has <code>recall</code> or <code>tool_accuracy</code> on "
                 "trained people yet.</p>")
    add_model_chart(page, models[~on_map] if mapped else models, mapped=kind if mapped else None)
    return page


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
