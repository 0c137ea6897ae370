"""index.html: a headline summary of the key comparisons (lmpipe.report.headline), links to every
report page, the sweep table and the runs table.

The sweep table has one row per sweep point (from `sweep_points`, or from the runs' sweep/point
columns on a store without it): its status, the point's parameters as columns, and the headline
figures of its latest eval run (recall and tool accuracy on trained people, knowledge bits,
parameters), joined through `runs.sweep`/`runs.point`. When a sweep repeats its points over seeds
(lmpipe/sweep/grid.py `seeds`), the table has one row per group of replicates instead: its
parameters without the seed keys, its seeds and statuses, and each figure as mean (min–max) over the
replicates' latest eval runs, aggregated in SQL (lmpipe/store/spread.py). The runs table lists the
most recent runs.
"""

from __future__ import annotations

import pandas as pd

from lmpipe.report.headline import headline
from lmpipe.report.page import NO_RUNS, PAGES, Page, duration, esc, fmt, fmt_spread, note, table
from lmpipe.report.source import Source, label, parse_json
from lmpipe.store.spread import spread_sql, sweep_groups_sql

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

FIGURES = ["recall", "tool_accuracy", "knowledge_bits", "parameters"]

# one row per replicate group: the statuses of its points and the spread of their figures
GROUP_SQL = """
WITH heads AS ({headline}),
points AS (
    SELECT p.sweep, p.point, coalesce(p.point_group, p.point) AS point_group, p.seed, p.status,
           p.attempts, p.wall_time_s, p.error, h.eval_run, {figures}
    FROM sweep_points p LEFT JOIN heads h USING (sweep, point)
),
statuses AS (
    SELECT sweep, point_group, string_agg(k || ' ' || status, ', ' ORDER BY status) AS status
    FROM (SELECT sweep, point_group, coalesce(status, 'unknown') AS status, count(*) AS k
          FROM points GROUP BY ALL)
    GROUP BY ALL
),
meta AS (
    SELECT sweep, point_group, count(*) AS points,
           list(seed ORDER BY seed) FILTER (WHERE seed IS NOT NULL) AS seeds,
           sum(attempts) AS attempts, sum(wall_time_s) AS wall_time_s,
           string_agg(point || ': ' || error, '; ' ORDER BY point)
               FILTER (WHERE error IS NOT NULL) AS error
    FROM points GROUP BY ALL
),
figures AS ({spread})
SELECT m.sweep, m.point_group, m.points, m.seeds, s.status, m.attempts, m.wall_time_s, m.error,
       f.* EXCLUDE (sweep, point_group), g.params AS group_params
FROM meta m JOIN statuses s USING (sweep, point_group) JOIN figures f USING (sweep, point_group)
LEFT JOIN ({groups}) g USING (sweep, point_group)
ORDER BY m.sweep, m.point_group
"""

RUNS_SQL = """
SELECT run_id, stage, name, status, {sweep_columns} started_at, wall_time_s, peak_rss_mb
FROM runs ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT {limit}
"""


def grouped(src: Source) -> bool:
    """Whether the sweep table shows groups of replicates: some group has more than one point."""
    points = src.sweep_points
    return ("point_group" in points and not points.empty
            and int(points.groupby(["sweep", "point_group"]).size().max()) > 1)


def group_table(src: Source) -> pd.DataFrame:
    """One formatted row per group of replicates, each figure as mean (min–max)."""
    figures = ", ".join(f"h.{f}" for f in FIGURES)
    heads = (HEADLINE_SQL.format(stage_rows=src.stage_rows("e"))
             if src.has("runs", "sweep", "point") else
             "SELECT NULL::VARCHAR AS sweep, NULL::VARCHAR AS point, NULL::VARCHAR AS eval_run, "
             + ", ".join(f"NULL::DOUBLE AS {f}" for f in FIGURES) + " WHERE false")
    spread = spread_sql("SELECT * FROM points", ["sweep", "point_group"], FIGURES)
    rows = src.df(GROUP_SQL.format(headline=heads, figures=figures, spread=spread,
                                   groups=sweep_groups_sql(src.columns)))
    params = [label_params(p) for p in rows.pop("group_params")]
    keys = list(dict.fromkeys(k for p in params for k in p))
    frame = rows[["sweep", "point_group", "points"]].rename(columns={"point_group": "group"})
    frame["seeds"] = rows["seeds"].map(_seeds)
    frame["status"] = rows["status"]
    for key in keys:
        frame[key] = [p.get(key, "–") for p in params]
    for name in FIGURES:
        number = (lambda v: f"{v:,.0f}") if name == "parameters" else fmt
        frame[name] = [fmt_spread(m, lo, hi, n, number) for m, lo, hi, n in zip(
            rows[name], rows[f"{name}_min"], rows[f"{name}_max"], rows[f"{name}_n"])]
    frame["replicates evaluated"] = rows["tool_accuracy_n"].where(
        rows["tool_accuracy_n"] > 0, rows["recall_n"]).astype(int)
    frame["wall time"] = rows["wall_time_s"].map(duration)
    if not rows["error"].isna().all():
        frame["error"] = rows["error"].map(lambda e: "" if e is None or pd.isna(e) else (
            str(e) if len(str(e)) <= MAX_ERROR_CHARS else str(e)[:MAX_ERROR_CHARS] + "…"))
    return frame.rename(columns={"recall": "recall (no tool)", "tool_accuracy": "tool accuracy",
                                 "knowledge_bits": "knowledge bits"})


def label_params(text: object) -> dict[str, str]:
    """A group's params (JSON text) as column labels."""
    value = parse_json(text)
    return {k: label(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _seeds(seeds: object) -> str:
    """A list of seeds from DuckDB (a list or an array; null when the group has none)."""
    if seeds is None or isinstance(seeds, float):
        return "–"
    return ", ".join(str(int(s)) for s in seeds) or "–"


def sweep_table(src: Source) -> pd.DataFrame:
    """One formatted row per sweep point, or per group of replicates when a sweep has seeds
    (empty frame when there is no sweep)."""
    points = src.sweep_points
    if points.empty:
        return pd.DataFrame()
    if grouped(src):
        return group_table(src)
    points = points.drop(columns=[c for c in ("point_group", "seed", "group_params")
                                  if c in points])
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
        groups = group["point_group"].nunique() if "point_group" in group else len(group)
        parts.append(f"<code>{esc(sweep)}</code>: {len(group)} points" +
                     (f" ({esc(status)})" if status else "") +
                     (f" in {groups} group{'s' if groups != 1 else ''} of replicates"
                      if groups < len(group) else ""))
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
    if not src.empty:
        page.add(headline(src))  # the page opens with the key comparisons, in numbers
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
        if "group" in sweeps:
            page.add(f"<p>{_sweep_summary(src)}. One row per group of replicates (the points "
                     "that differ only in their seed): its parameters without the seed keys, its "
                     "seeds, then the headline figures of each replicate's latest eval run (on "
                     "trained people; averaged when the run evaluated several models) as the mean "
                     "over the replicates and, in brackets, the lowest and highest of them.</p>",
                     table(sweeps))
        else:
            page.add(f"<p>{_sweep_summary(src)}. One row per sweep point: its parameters, then "
                     "the headline figures of its latest eval run (on trained people; averaged "
                     "when the run evaluated several models).</p>", table(sweeps))

    runs, total = runs_table(src)
    page.add("<h2>Runs</h2>")
    if total > len(runs):
        page.add(note(f"The {len(runs)} most recent of {total:,} runs; "
                      "<code>lmpipe query \"SELECT * FROM runs\"</code> lists them all."))
    page.add(table(runs))
    return page
