"""Replicates in the run database: which runs repeat one another, and their spread in SQL.

A sweep with `seeds` (lmpipe/sweep/grid.py) runs every point of its grid once per seed: the points
of one *group* differ only in their seed. The store records each run's `point_group` and `seed`
(from its point.json) and each sweep point's `point_group`, `seed` and `group_params` (its params
without the seed keys, from sweep.json). Runs replicate one another when they belong to the same
sweep and group and play the same part in their point (the run folder's name: `teacher`, `eval`),
so their *group id* is `<sweep>/<group>/<run name>`; any other run (outside a sweep, or a sweep
without seeds) is a group of one, its id the run id. Aggregation is always mean, min, max and n
(the number of replicates) over the group, computed by DuckDB.

The store creates four views from the SQL below (`lmpipe query "SELECT * FROM eval_spread"`):

    run_groups(run_id, sweep, point_group, seed, group_id, replicates)
    eval_spread(group_id, sweep, point_group, model, metric, split, attribute, step,
                mean, min, max, n, seeds, runs)          overall and per-attribute eval figures
    metric_spread(group_id, sweep, point_group, name, step, mean, min, max, n)
                                                         logged metrics, step by step
    sweep_groups(sweep, point_group, params, points, seeds, n, completed)
                                                         a group's params without the seed keys

The SQL builders take the columns a store has, so the reports can use them on stores written
before replicates existed (every run then is its own group, and n is 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Columns = Mapping[str, set[str]]

ALL_COLUMNS: dict[str, set[str]] = {
    "runs": {"run_id", "sweep", "point", "point_group", "seed"},
    "evals": {"run_id", "model", "metric", "split", "attribute", "value", "step", "turn"},
    "metrics": {"run_id", "step", "name", "value"},
    "sweep_points": {"sweep", "point", "status", "params", "point_group", "seed", "group_params"},
}


def _has(columns: Columns, table: str, *names: str) -> bool:
    return set(names) <= columns.get(table, set())


def run_groups_sql(columns: Columns = ALL_COLUMNS) -> str:
    """(run_id, sweep, point_group, seed, group_id, replicates) for every run."""
    sweep = "sweep" if _has(columns, "runs", "sweep", "point") else "NULL::VARCHAR"
    point = "point" if _has(columns, "runs", "sweep", "point") else "NULL::VARCHAR"
    group = (f"coalesce(point_group, {point})" if _has(columns, "runs", "point_group")
             else point)
    seed = "seed" if _has(columns, "runs", "seed") else "NULL::BIGINT"
    return f"""
SELECT run_id, sweep, point_group, seed, group_id,
       count(*) OVER (PARTITION BY group_id) AS replicates
FROM (
    SELECT run_id, {sweep} AS sweep, {group} AS point_group, {seed} AS seed,
           -- replicates: same sweep, same group, same part of the point (the run folder's name)
           CASE WHEN {sweep} IS NULL OR {group} IS NULL THEN run_id
                ELSE {sweep} || '/' || {group} || '/' || regexp_extract(run_id, '[^/]+$') END
               AS group_id
    FROM runs
)"""


def spread_sql(rows: str, keys: Sequence[str], values: Sequence[str]) -> str:
    """Per distinct `keys` of the query `rows`: for each of `values`, its mean (named as the
    value), `<value>_min`, `<value>_max` and `<value>_n` (the rows that have it)."""
    parts = []
    for v in values:
        parts += [f"avg({v}) AS {v}", f"min({v}) AS {v}_min", f"max({v}) AS {v}_max",
                  f"count({v}) AS {v}_n"]
    by = ", ".join(keys)
    return f"SELECT {by}, {', '.join(parts)} FROM ({rows}) GROUP BY {by}"


def eval_spread_sql(columns: Columns = ALL_COLUMNS) -> str:
    """Eval figures per replicate group: each run's rows averaged first (a run may repeat a
    row), then mean, min, max and n over the group's runs."""
    step = "step" if _has(columns, "evals", "step") else "NULL::BIGINT AS step"
    turn = "turn" if _has(columns, "evals", "turn") else "NULL::BIGINT AS turn"
    return f"""
WITH g AS ({run_groups_sql(columns)}),
per_run AS (
    SELECT run_id, model, metric, split, attribute, {step}, {turn}, avg(value) AS value
    FROM evals WHERE isfinite(value) GROUP BY ALL
)
SELECT g.group_id, any_value(g.sweep) AS sweep, any_value(g.point_group) AS point_group,
       p.model, p.metric, p.split, p.attribute, p.step, p.turn,
       avg(p.value) AS mean, min(p.value) AS min, max(p.value) AS max, count(*) AS n,
       list(g.seed ORDER BY g.seed) FILTER (WHERE g.seed IS NOT NULL) AS seeds,
       list(p.run_id ORDER BY p.run_id) AS runs
FROM per_run p JOIN g USING (run_id)
GROUP BY g.group_id, p.model, p.metric, p.split, p.attribute, p.step, p.turn"""


def metric_spread_sql(columns: Columns = ALL_COLUMNS) -> str:
    """Logged metrics per replicate group and step (a resumed run's repeated step averaged)."""
    return f"""
WITH g AS ({run_groups_sql(columns)}),
per_run AS (
    SELECT run_id, name, step, avg(value) AS value FROM metrics
    WHERE isfinite(value) GROUP BY ALL
)
SELECT g.group_id, any_value(g.sweep) AS sweep, any_value(g.point_group) AS point_group,
       p.name, p.step, avg(p.value) AS mean, min(p.value) AS min, max(p.value) AS max,
       count(*) AS n
FROM per_run p JOIN g USING (run_id)
GROUP BY g.group_id, p.name, p.step"""


def sweep_groups_sql(columns: Columns = ALL_COLUMNS) -> str:
    """One row per sweep group: its params without the seed keys, its points and seeds."""
    has = set(columns.get("sweep_points", set()))
    group = "coalesce(point_group, point)" if "point_group" in has else "point"
    seed = "seed" if "seed" in has else "NULL::BIGINT"
    params = ("coalesce(group_params, params)" if "group_params" in has
              else "params" if "params" in has else "NULL::VARCHAR")
    status = "status" if "status" in has else "NULL::VARCHAR"
    return f"""
SELECT sweep, point_group, any_value(params) AS params, list(point ORDER BY seed, point) AS points,
       list(seed ORDER BY seed) FILTER (WHERE seed IS NOT NULL) AS seeds, count(*) AS n,
       count(*) FILTER (WHERE status = 'completed') AS completed
FROM (SELECT sweep, point, {group} AS point_group, {seed} AS seed, {params} AS params,
             {status} AS status FROM sweep_points)
GROUP BY sweep, point_group"""


VIEWS = {"run_groups": run_groups_sql, "eval_spread": eval_spread_sql,
         "metric_spread": metric_spread_sql, "sweep_groups": sweep_groups_sql}
