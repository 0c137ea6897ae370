"""Recipes and grids: ready-made params files, and grids of values that become DVC experiments.

A recipe (`recipes/*.yaml`) is a complete params file whose header comment is the command that
runs it. `lmpipe run RECIPE [key=value ...]` validates it with the overrides, makes it the
workspace's `params.yaml` (git keeps the default; `git checkout params.yaml` restores it) and runs
`dvc repro`, so DVC's cache decides what reruns. A grid (`grid.yaml`) maps dotted keys to lists of
values; `lmpipe grid grid.yaml` checks every combination, then queues them all with one
`dvc exp run --queue -S key=v1,v2 ...` (DVC crosses the lists) for `dvc queue start`.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import yaml

from lmpipe.config import ConfigError, apply_overrides, load_params, validate_params


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
    return subprocess.call(["dvc", "repro", *(stages or [])], cwd=project)


def _scalar(value) -> str:
    """A value as `-S key=value` and YAML both read it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def grid_points(grid: Path, base: Path) -> tuple[dict[str, list], int]:
    """The grid's axes, after checking that every combination is a valid params file."""
    axes = yaml.safe_load(Path(grid).read_text()) or {}
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{grid}: expected a mapping of dotted keys to lists of values")
    axes = {k: v if isinstance(v, list) else [v] for k, v in axes.items()}
    tree = yaml.safe_load(Path(base).read_text()) or {}
    count = 0
    for values in itertools.product(*axes.values()):
        point = [f"{k}={_scalar(v)}" for k, v in zip(axes, values)]
        validate_params(apply_overrides(yaml.safe_load(yaml.safe_dump(tree)), point),
                        source=f"{grid} point {' '.join(point)}")
        count += 1
    return axes, count


def grid_command(axes: dict[str, list]) -> list[str]:
    command = ["dvc", "exp", "run", "--queue"]
    for key, values in axes.items():
        rendered = ",".join(_scalar(v) for v in values)
        command += ["-S", f"{key}={rendered}"]
    return command
