"""Recipes: ready-made params files, installed as the workspace's params.yaml and run.

A recipe (`recipes/*.yaml`) is a complete params file whose header comment is the command that
runs it. `lmpipe run RECIPE [key=value ...]` validates it with the overrides, makes it the
workspace's `params.yaml` (git keeps the default; `git checkout params.yaml` restores it) and runs
`dvc repro`, so DVC's cache decides what reruns.
Grids of values to sweep are lmpipe/sweep/grid.py's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from lmpipe.params.config import load_params


def install_recipe(recipe: Path, overrides: list[str], params_path: Path) -> Path:
    """Validate `recipe` + `overrides` and write them, every section resolved (DVC wants each
    section a stage names to exist), as `params_path`; return it."""
    recipe = Path(recipe)
    params = load_params(recipe, overrides)  # refuse a bad recipe or override before writing
    if recipe.resolve() == Path(params_path).resolve() and not overrides:
        return Path(params_path)
    header = "".join(line + "\n" for line in recipe.read_text().splitlines() if line.startswith("#"))
    Path(params_path).write_text(
        f"{header}# written by: lmpipe run {recipe} {' '.join(overrides)}\n"
        + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return Path(params_path)


def run_recipe(recipe: Path, overrides: list[str], project: Path = Path("."),
               stages: list[str] | None = None) -> int:
    """Install the recipe and reproduce the pipeline (or only up to `stages`)."""
    install_recipe(recipe, overrides, project / "params.yaml")
    return subprocess.call([sys.executable, "-m", "dvc", "repro", *(stages or [])], cwd=project)
