"""Reading a run's probe logs for the store: `probes.jsonl` (activation and gradient statistics
while training, lmpipe/train/probes.py) and `linear_probes.jsonl` (what a linear classifier reads
from each layer of each checkpoint, lmpipe/eval/linear_probe.py).

    probes(run_id, step, point, site, layer, depth, kind, stat, value)
                        long format: one row per statistic of a recorded point
    linear_probes(run_id, step, checkpoint, layer, attribute, accuracy, chance, n_train, n_test,
                  n_classes, control_next_token_accuracy, control_task_accuracy, selectivity,
                  context)
                        the controls (next-token baseline, Hewitt & Liang's control task and
                        selectivity) are NULL in files written before they were recorded

Unreadable lines are skipped and counted, like every other log the store reads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmpipe.core.jsonl import read_jsonl
from lmpipe.core.run_folder import LINEAR_PROBES_FILE, PROBES_FILE

PROBES_COLUMNS = [("run_id", "VARCHAR"), ("step", "BIGINT"), ("point", "VARCHAR"),
                  ("site", "VARCHAR"), ("layer", "BIGINT"), ("depth", "BIGINT"),
                  ("kind", "VARCHAR"), ("stat", "VARCHAR"), ("value", "DOUBLE")]
LINEAR_PROBES_COLUMNS = [("run_id", "VARCHAR"), ("step", "BIGINT"), ("checkpoint", "VARCHAR"),
                         ("layer", "BIGINT"), ("attribute", "VARCHAR"), ("accuracy", "DOUBLE"),
                         ("chance", "DOUBLE"), ("n_train", "BIGINT"), ("n_test", "BIGINT"),
                         ("n_classes", "BIGINT"), ("control_next_token_accuracy", "DOUBLE"),
                         ("control_task_accuracy", "DOUBLE"), ("selectivity", "DOUBLE"),
                         ("context", "VARCHAR")]
# what identifies a probe record; every other numeric field is a statistic
PROBE_KEYS = {"step", "point", "site", "layer", "depth", "kind"}


def _int(x: Any) -> int | None:
    return x if type(x) is int else None


def _num(x: Any) -> float | None:
    return float(x) if type(x) in (int, float) and math.isfinite(x) else None


def read_probes(folder: Path, run_id: str, out: list[tuple]) -> int:
    """Append the rows of `folder/probes.jsonl` to `out`; return the skipped line count."""
    records, skipped = read_jsonl(folder / PROBES_FILE)
    for r in records:
        if _int(r.get("step")) is None or not isinstance(r.get("point"), str):
            skipped += 1
            continue
        head = (run_id, r["step"], r["point"], r.get("site"), _int(r.get("layer")),
                _int(r.get("depth")), r.get("kind"))
        out.extend((*head, name, float(value)) for name, value in r.items()
                   if name not in PROBE_KEYS and type(value) in (int, float))
    return skipped


def read_linear_probes(folder: Path, run_id: str, out: list[tuple]) -> int:
    """Append the rows of `folder/linear_probes.jsonl` to `out`; return the skipped line count."""
    records, skipped = read_jsonl(folder / LINEAR_PROBES_FILE)
    for r in records:
        if _int(r.get("layer")) is None or _num(r.get("accuracy")) is None:
            skipped += 1
            continue
        out.append((run_id, _int(r.get("step")), r.get("checkpoint"), r["layer"],
                    r.get("attribute"), _num(r["accuracy"]), _num(r.get("chance")),
                    _int(r.get("n_train")), _int(r.get("n_test")), _int(r.get("n_classes")),
                    _num(r.get("control_next_token_accuracy")),
                    _num(r.get("control_task_accuracy")), _num(r.get("selectivity")),
                    r.get("context") if isinstance(r.get("context"), str) else None))
    return skipped
