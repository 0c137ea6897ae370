"""Colours for curves.html: one colour per run (or per replicate group) from a parameter's
value, the per-run table the charts look their fields up in, and the inline CSV the points
travel as."""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd

from lmpipe.report.page import esc
from lmpipe.report.source import Source, label

RUN_COLUMNS = {"run_id", "stage", "name", "status", "sweep", "point", "point_group", "seed",
               "host", "device", "git_commit", "lmpipe_version"}
MAX_LEGEND = 20              # more colours than this: no legend (tooltips name the run)

# {rows}: a query of (run_id, metric, step, value); {keep}: points kept per curve at most




def default_color_by(src: Source) -> str:
    """The first parameter varying across sweep points, else run_id."""
    varying = src.varying_point_keys()
    return varying[0] if varying else "run_id"


def run_colors(src: Source, color_by: str, run_ids: list[str]) -> tuple[dict[str, Any], str | None]:
    """run_id -> raw colour value for `run_ids`, and a note when `color_by` had to fall back."""
    if color_by in RUN_COLUMNS and color_by in src.columns.get("runs", set()):
        values = dict(src.con.execute(f"SELECT run_id, {color_by} FROM runs").fetchall())
        return {r: values.get(r) for r in run_ids}, None
    values = src.param_per_run(color_by)
    if not any(r in values for r in run_ids):
        return {r: r for r in run_ids}, (f"No run has the parameter <code>{esc(color_by)}</code>; "
                                         "coloured by run instead.")
    return {r: values.get(r) for r in run_ids}, None


@dataclass
class Colors:
    """Per-run colour fields (`c`: a label, `cq`: the number when continuous) and the encoding."""

    fields: dict[str, dict[str, Any]]
    encoding: alt.Color
    field: str
    clickable: bool  # a discrete legend: clicking an entry highlights its runs


def color_encoding(raw: dict[str, Any], title: str) -> Colors:
    """Few numeric values: ordered categories (viridis); many: a continuous scale (log when they
    span two decades); anything else: categories, without a legend when there are too many."""
    values = [v for v in raw.values() if v is not None]
    numeric = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   for v in values)
    labels = {r: label(v) if v is not None else "–" for r, v in raw.items()}
    distinct = sorted(set(labels.values()))
    if numeric and len(distinct) > MAX_LEGEND:
        low, high = min(values), max(values)
        log = low > 0 and high / low >= 100
        scale = alt.Scale(type="log" if log else "linear", scheme="viridis")
        return Colors({r: {"c": labels[r], "cq": raw[r]} for r in raw},
                      alt.Color("cq:Q", title=title, scale=scale), "cq", False)
    if numeric:
        order = sorted({label(v) for v in values}, key=float) + (["–"] if "–" in distinct else [])
        return Colors({r: {"c": labels[r]} for r in raw},
                      alt.Color("c:O", title=title, sort=order, scale=alt.Scale(scheme="viridis")),
                      "c", True)
    legend = len(distinct) <= MAX_LEGEND
    scheme = "category10" if len(distinct) <= 10 else "category20"
    return Colors({r: {"c": labels[r]} for r in raw},
                  alt.Color("c:N", title=title, legend=alt.Legend() if legend else None,
                            scale=alt.Scale(scheme=scheme)), "c", legend)


def run_table(src: Source, run_ids: list[str], fields: dict[str, dict[str, Any]],
              groups: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-run lookup table: index r, run id, sweep point, colour fields; with `groups`
    (one row per group id: sweep, point_group, replicates) the curves are groups, and `n` is the
    number of replicates."""
    if groups is not None:
        rows = [{"r": i, "run": g, "point": (f"{groups.at[g, 'sweep']}/"
                                             f"{groups.at[g, 'point_group']}"
                                             if isinstance(groups.at[g, "sweep"], str) else "–"),
                 "n": int(groups.at[g, "replicates"]), **fields[g]}
                for i, g in enumerate(run_ids)]
        return pd.DataFrame(rows)
    points = {r: f"{s}/{p}" for r, s, p in src.run_points.itertuples(index=False)}
    rows = [{"r": i, "run": run_id, "point": points.get(run_id, "–"), **fields[run_id]}
            for i, run_id in enumerate(run_ids)]
    return pd.DataFrame(rows)


def aggregates(src: Source, color_by: str) -> bool:
    """Whether curves are drawn per group of replicates: some group has several, and the colour
    is not a seed (which asks to see each replicate)."""
    return src.replicated and color_by not in src.seed_keys and color_by != "seed"


def group_colors(src: Source, color_by: str, group_ids: list[str]
                 ) -> tuple[dict[str, Any], str | None]:
    """group id -> raw colour value: that of the group's first run (the replicates share every
    parameter but the seed)."""
    if color_by == "run_id":
        return {g: g for g in group_ids}, None
    first = src.run_groups.drop_duplicates("group_id").set_index("group_id")["run_id"]
    raw, fallback = run_colors(src, color_by, [first[g] for g in group_ids])
    if fallback:
        return {g: g for g in group_ids}, fallback
    return {g: raw[first[g]] for g in group_ids}, None


def inline_csv(frame: pd.DataFrame, numbers: list[str]) -> alt.InlineData:
    """A frame as inline CSV: about half the bytes of JSON records, parsed by Vega."""
    text = frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    return alt.InlineData(values=text, format=alt.DataFormat(
        type="csv", parse={c: "number" for c in numbers}))
