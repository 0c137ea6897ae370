"""The evaluated models of scaling.html, one row each, from the store: parameters, facts, the
training mode, knowledge bits, accuracies with and without the tool, and the architecture.

Every evaluated model is one point, from the eval stage's overall rows (`evals`, attribute null,
step null): its `parameters`, `knowledge_bits` (trained split), `recall` and `tool_accuracy`
(trained people), joined to the eval run's world (`params`: world.people, world.tool_dialogs,
world.qa_dialogs) and, in a sweep, its point's `mode`. Facts = people × the six attributes. Within a
sweep only the latest eval run of each point and model counts (a retried point is not counted
twice).

Each model's architecture (`model.arch`: llama, mamba, mamba2, hawk) is its section's
(lmpipe/core/pipeline_models.py: `teacher.model.arch` for the teacher, `student.model.arch` for
the student and the models made from it): a point's override first, llama when the run does not
say, as a llama section's dump omits it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lmpipe.core.archs import DEFAULT_ARCH
from lmpipe.core.pipeline_models import section_of
from lmpipe.core.protocol import ATTRIBUTES
from lmpipe.report.source import Source, label, parse_json

# the per-model chart lists models in this order; of two kinds spanning a lattice equally, the map
# takes the earlier
MODEL_ORDER = ["teacher", "student", "model", "distilled", "quantized", "quantized_ptq", "int8"]
MODEL_RANK = {m: i for i, m in enumerate(MODEL_ORDER)}

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
           max(n) FILTER (WHERE metric = 'tool_accuracy' AND split = 'trained') AS tool_n,
           avg(value) FILTER (WHERE metric = 'tool_accuracy' AND split = 'heldout')
               AS heldout_tool_accuracy
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
    """Each model's architecture: its section's `model.arch` (`section_of`: the teacher's from
    `teacher.model.arch`, every other model's from `student.model.arch`)."""
    sections = {section: src.param_per_run(f"{section}.model.arch")
                for section in ("teacher", "student")}
    return [label(sections[section_of(model)].get(run_id))
            or DEFAULT_ARCH for run_id, model in zip(models["run_id"], models["model"])]


def archs_of(models: pd.DataFrame) -> list[str]:
    """The architectures among `models`, llama first then in order of appearance."""
    found = list(dict.fromkeys(models["arch"])) if "arch" in models else []
    return sorted(found, key=lambda a: a != DEFAULT_ARCH)
