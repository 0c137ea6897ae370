"""A training run watched from outside: its process, summary and run folder say whether it is
still going, and a run that cannot have checkpoints is refused before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmpipe.runs.watched_run import (opened_since, process_alive, training_finished,
                                     watched_training_run)
from lmpipe.core.section import ConfigError


def test_a_running_process_is_alive_and_a_reaped_one_is_not():
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)


def test_training_is_over_when_its_summary_is_newer_than_its_start(tmp_path: Path):
    run = tmp_path / "runs" / "teacher"
    run.mkdir(parents=True)
    started = time.time()
    assert not training_finished(run, True, started, None)
    (run / "summary.json").write_text("{}")
    os.utime(run / "summary.json", (started - 60, started - 60))  # an earlier run's summary
    assert not training_finished(run, True, started, None)
    assert training_finished(run, True, None, None)  # no start time: any summary counts
    os.utime(run / "summary.json", (started + 1, started + 1))
    assert training_finished(run, True, started, None)
    assert not training_finished(run, False, started, None)  # only the process then


def test_a_run_has_opened_its_folder_once_its_params_are_newer_than_its_start(tmp_path: Path):
    started = time.time()
    assert not opened_since(tmp_path, started)
    (tmp_path / "params.json").write_text("{}")
    os.utime(tmp_path / "params.json", (started - 5, started - 5))
    assert not opened_since(tmp_path, started)
    os.utime(tmp_path / "params.json", (started + 1, started + 1))
    assert opened_since(tmp_path, started)


def _workspace(tmp_path: Path, params: dict) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_the_watched_run_and_its_eval_config(tmp_path: Path):
    workdir = _workspace(tmp_path, {"eval": {"seed": 7}})
    found, run, config = watched_training_run("student", workdir / "params.yaml",
                                              ["student.train.steps=5"], trained_people=3,
                                              heldout_people=2)
    assert found == workdir.resolve()
    assert run == workdir.resolve() / "runs" / "student"
    assert (config.run_name, config.seed, config.trained_people, config.heldout_people) == \
        ("student", 7, 3, 2)
    assert config.db_path == str(workdir.resolve() / "data" / "world" / "people.duckdb")


@pytest.mark.parametrize("name, params, expected", [
    ("distill", {}, "name must be teacher or student"),
    ("teacher", {"teacher": {"pretrained": "smollm2-135m"}}, "no checkpoints to evaluate"),
])
def test_a_run_without_checkpoints_is_refused(tmp_path: Path, name, params, expected):
    with pytest.raises(ConfigError, match=expected):
        watched_training_run(name, _workspace(tmp_path, params))


def test_a_params_file_other_than_the_workspaces_is_refused(tmp_path: Path):
    other = tmp_path / "recipe.yaml"
    other.write_text("{}\n")
    with pytest.raises(ConfigError, match="reads params.yaml"):
        watched_training_run("teacher", other)
