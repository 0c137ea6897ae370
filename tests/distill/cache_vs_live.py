"""The distillation tests' cache-vs-live run: one student trained from the teacher's cache and one
from the live teacher, the same objective and seed, through the real training loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.read import TeacherCache
from lmpipe.distill.objective import build_objective
from lmpipe.distill.params import DistillParams
from lmpipe.distill.teacher import CachedTeacher, LiveTeacher
from lmpipe.train.loop import train


def cache_and_live_runs(cache: TeacherCache, teacher: torch.nn.Module,
                        make_student: Callable[[], torch.nn.Module], d: DistillParams,
                        tokens: Path, pad_id: int, folder: Path) -> list[list[dict[str, Any]]]:
    """Train `make_student()` against `d`'s objective for `d.train`, first from `cache`, then
    from the live `teacher`, each run logged in `folder/cache`, `folder/live`; the metrics
    records of each run, in that order."""
    split, val = TokenSplit.open(tokens, "train"), TokenSplit.open(tokens, "val")
    runs = []
    for name, source in (("cache", CachedTeacher(cache)), ("live", LiveTeacher(teacher))):
        student = make_student()
        objective = build_objective(d, source, student)
        with RunLog(folder / name, "distill", name, {}) as run:
            train(student, split, val, d.train, run, pad_id, objective=objective)
        runs.append([json.loads(line) for line in (folder / name / "metrics.jsonl").open()])
    return runs


def losses(records: list[dict[str, Any]]) -> list[float]:
    """The training loss of every logged step of one run."""
    return [r["loss"] for r in records if "loss" in r]
