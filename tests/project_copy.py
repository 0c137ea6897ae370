"""Helpers for tests that run lmpipe as a user does: a copy of the project in a fresh workspace,
the environment its commands see (the venv's tools on PATH, everything offline), and a
subprocess run that fails the test with the command's own output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pipeline_env(tmp_path: Path) -> dict[str, str]:
    """os.environ with the venv's bin first on PATH and Prefect's home under `tmp_path`."""
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PYTHONUNBUFFERED="1")
    return env


def copy_project(work: Path, names: tuple[str, ...] = ("dvc.yaml", "stages", "lmpipe")) -> Path:
    """A fresh workspace `work` holding the project's `names` (files or folders, no caches)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = ROOT / name
        (shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, work / name))
    return work


def run_checked(args: list[str], cwd: Path, env: dict[str, str], check: bool = True):
    """Run `args`; with `check`, a non-zero exit fails the test with the command's output."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result
