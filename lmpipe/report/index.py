"""index.html: links to every report page, the sweep table and the runs table.

The sweep table has one row per sweep point (from `sweep_points`, or from the runs' sweep/point
columns on a store without it): its status, the point's parameters as columns, and the headline
figures of its latest eval run (recall and tool accuracy on trained people, knowledge bits,
parameters), joined through `runs.sweep`/`runs.point`. The runs table lists the most recent runs.
"""

from __future__ import annotations

import pandas as pd

from lmpipe.report.page import NO_RUNS, PAGES, Page, duration, esc, fmt, note, table
from lmpipe.report.source import Source, label

MAX_RUN_ROWS = 200
MAX_ERROR_CHARS = 160

HEADLINE_SQL = """
WITH per_run AS (
    SELECT r.sweep, r.point, r.run_id, r.started_at,
           avg(e.value) FILTER (WHERE e.metric = 'recall' AND e.split = 'trained') AS recall,
           avg(e.value) FILTER (WHERE e.metric = 'tool_accuracy' AND e.split = 'trained')
               AS tool_accuracy,
           avg(e.value) FILTER (WHERE e.metric = 'knowledge_bits'
                                AND coalesce(e.split, 'trained') = 'trained') AS knowledge_bits,
           avg(e.value) FILTER (WHERE e.metric = 'parameters') AS parameters
    FROM evals e JOIN runs r USING (run_id)
    WHERE r.sweep IS NOT NULL AND e.attribute IS NULL AND {stage_rows}
      AND e.metric IN ('recall', 'tool_accuracy', 'knowledge_bits', 'parameters')
    GROUP BY ALL
)
SELECT sweep, point, run_id AS eval_run, recall, tool_accuracy, knowledge_bits, parameters
FROM per_run
QUALIFY row_number() OVER (PARTITION BY sweep, point
                           ORDER BY started_at DESC NULLS LAST, run_id DESC) = 1
"""

RUNS_SQL = """
SELECT run_id, stage, name, status, {sweep_columns} started_at, wall_time_s, peak_rss_mb
FROM runs ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT {limit}
"""


def sweep_table(src: Source) -> pd.DataFrame:
    """One formatted row per sweep point (empty frame when there is no sweep)."""
    points = src.sweep_points
    if points.empty:
        return pd.DataFrame()
    keys = src.point_keys
    frame = points.drop(columns=["params"]).copy()
    for key in keys:
        frame[key] = [label(p.get(key)) if key in p else "–" for p in points["params"]]
    if src.has("runs", "sweep", "point"):
        heads = src.df(HEADLINE_SQL.format(stage_rows=src.stage_rows("e")))
        frame = frame.merge(heads, on=["sweep", "point"], how="left")
    for column in ("recall", "tool_accuracy", "knowledge_bits"):
        if column in frame:
            frame[column] = frame[column].map(fmt)
    if "parameters" in frame:
        frame["parameters"] = frame["parameters"].map(
            lambda v: "–" if pd.isna(v) else f"{v:,.0f}")
    if "wall_time_s" in frame:
        frame["wall_time_s"] = frame["wall_time_s"].map(duration)
    if "error" in frame:
        if frame["error"].isna().all():
            frame = frame.drop(columns="error")
        else:
            frame["error"] = frame["error"].map(lambda e: "" if e is None or pd.isna(e) else (
                str(e) if len(str(e)) <= MAX_ERROR_CHARS else str(e)[:MAX_ERROR_CHARS] + "…"))
    renames = {"wall_time_s": "wall time", "eval_run": "eval run", "recall": "recall (no tool)",
               "tool_accuracy": "tool accuracy", "knowledge_bits": "knowledge bits"}
    return frame.rename(columns=renames)


def _sweep_summary(src: Source) -> str:
    points = src.sweep_points
    parts = []
    for sweep, group in points.groupby("sweep", sort=True):
        counts = (group["status"].fillna("unknown").value_counts().sort_index()
                  if "status" in group else pd.Series(dtype=int))
        status = ", ".join(f"{n} {s}" for s, n in counts.items())
        parts.append(f"<code>{esc(sweep)}</code>: {len(group)} points" +
                     (f" ({esc(status)})" if status else ""))
    return "; ".join(parts)


def runs_table(src: Source) -> tuple[pd.DataFrame, int]:
    total = src.scalar("SELECT count(*) FROM runs")
    sweep_columns = "sweep, point," if src.has("runs", "sweep", "point") else ""
    runs = src.df(RUNS_SQL.format(sweep_columns=sweep_columns, limit=MAX_RUN_ROWS))
    runs = runs.assign(
        started_at=runs["started_at"].map(lambda t: "–" if pd.isna(t) else f"{t:%Y-%m-%d %H:%M}"),
        wall_time_s=runs["wall_time_s"].map(duration),
        peak_rss_mb=runs["peak_rss_mb"].map(lambda v: "–" if pd.isna(v) else f"{v:,.0f}"),
    ).rename(columns={"started_at": "started (UTC)", "wall_time_s": "wall time",
                      "peak_rss_mb": "peak RSS (MiB)"})
    if sweep_columns and runs["sweep"].isna().all():
        runs = runs.drop(columns=["sweep", "point"])
    return runs, total


def build(src: Source, pages: list[Page]) -> Page:
    """The index, linking `pages` (built before it, so it can say which have charts)."""
    page = Page("index", "index")
    built = {p.stem: p for p in pages}
    items = []
    for stem, text, description in PAGES[1:]:
        charts = len(built[stem].charts) if stem in built else 0
        state = f"{charts} chart{'s' if charts != 1 else ''}" if charts else "no data yet"
        items.append(f'<li><a href="{stem}.html">{esc(text)}</a>: {esc(description)} '
                     f'<span class="meta">({state})</span></li>')
    page.add("<h2>Reports</h2>", "<ul>", *items, "</ul>")
    if src.empty:
        page.add(NO_RUNS)
        return page
    counts = {t: src.scalar(f"SELECT count(*) FROM {t}") for t in ("runs", "metrics", "evals")}
    page.add(note(f"The store holds {counts['runs']:,} runs, {counts['metrics']:,} metric rows "
                  f"and {counts['evals']:,} eval rows."))

    page.add("<h2>Sweeps</h2>")
    sweeps = sweep_table(src)
    if sweeps.empty:
        page.add("<p>No sweep yet.</p>")
    else:
        page.add(f"<p>{_sweep_summary(src)}. One row per sweep point: its parameters, then the "
                 "headline figures of its latest eval run (on trained people; averaged when the "
                 "run evaluated several models).</p>", table(sweeps))

    runs, total = runs_table(src)
    page.add("<h2>Runs</h2>")
    if total > len(runs):
        page.add(note(f"The {len(runs)} most recent of {total:,} runs; "
                      "<code>lmpipe query \"SELECT * FROM runs\"</code> lists them all."))
    page.add(table(runs))
    return page
