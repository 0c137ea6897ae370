"""Sweep grids: the points a `grid.yaml` describes, every one checked before anything runs.

A grid names parameter values to cross and groups of values that move together:

    name: in-tool-learning                          # the sweep's name (default: the file's stem)
    pipeline: recipes/in-tool-learning/dvc.yaml     # default: dvc.yaml
    params: recipes/in-tool-learning/params.yaml    # default: params.yaml beside the pipeline
    jobs: 2                                         # points run at once (default 1)
    retries: 1                                      # extra attempts for a failed point (default 0)
    cross:                                          # every combination of these lists ...
      teacher.model.d_model: [32, 48]
      world.people: [25, 100, 400]
    zip:                                            # ... times each group, whose lists are read
      - world.tool_dialogs: [true, false]           # in lockstep (the i-th values together)
        world.qa_dialogs: [false, true]

Dotted keys at the top level are crossed too, so `key: [a, b]` alone is a grid. The points are the
product of the crossed axes and the zipped groups, in file order (the last axis varies fastest),
named p00, p01, ... The sweep id is the name plus a hash of the pipeline, the params file and the
points, so rerunning the same grid reuses its id (and its folder under runs/sweeps/).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmpipe.config import ConfigError, apply_overrides, validate_params

OPTIONS = {"name", "pipeline", "params", "jobs", "retries", "cross", "zip"}


def render_value(value: Any) -> str:
    """A value as YAML (and so `dvc exp run -S key=value` and lmpipe overrides) reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


@dataclass(frozen=True)
class Point:
    """One combination: its name and the dotted-key overrides that make it."""

    name: str
    overrides: dict[str, Any]

    def assignments(self) -> list[str]:
        return [f"{key}={render_value(value)}" for key, value in self.overrides.items()]

    def label(self) -> str:
        return " ".join(self.assignments())


@dataclass(frozen=True)
class Grid:
    """An expanded, validated grid: what to run, where, and how many at once."""

    name: str
    sweep_id: str
    source: Path
    pipeline: Path
    params: Path
    jobs: int
    retries: int
    axes: dict[str, Any]
    points: list[Point]


def _axis_lists(mapping: Any, where: str) -> dict[str, list]:
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"{where}: expected a mapping of dotted keys to lists of values")
    axes = {}
    for key, values in mapping.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}: '{key}' has no values")
        axes[str(key)] = values
    return axes


def expand(cross: dict[str, list], zips: list[dict[str, list]]) -> list[dict[str, Any]]:
    """Every point: the product of the crossed axes and the zipped groups, last axis fastest."""
    factors: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in cross.items()]
    for group in zips:
        keys = list(group)
        factors.append([dict(zip(keys, row)) for row in zip(*group.values())])
    points = []
    for combo in itertools.product(*factors):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        points.append(merged)
    return points


def _positive(value: Any, key: str, source: Path, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def pin(cross: dict[str, list], groups: list[dict[str, list]], overrides: list[str]) -> None:
    """Fix keys to one value (`key=value`, e.g. a tiny test run of a long sweep), in place: a
    crossed or zipped key takes that value in every point; any other key becomes a constant."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        value = yaml.safe_load(raw)
        group = next((g for g in groups if key in g), None)
        if group is not None:
            group[key] = [value] * len(group[key])
        else:
            cross[key] = [value]


def load_grid(path: str | Path, project: str | Path = ".",
              overrides: list[str] | None = None) -> Grid:
    """Read, expand and check a grid: every point must be a valid params file for its pipeline.
    `overrides` (`key=value`) pin keys to one value; points that become equal run once.

    Raises ConfigError naming the grid, the point and the key at fault, before any compute."""
    path, project = Path(path), Path(project)
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{path}: expected a mapping (cross:, zip: or dotted keys to lists)")
    unknown = [k for k in spec if k not in OPTIONS and "." not in str(k)]
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown}; options are {sorted(OPTIONS)} and "
                          "dotted parameter keys")
    cross = {k: v for k, v in spec.items() if "." in str(k)}
    if "cross" in spec:
        listed = _axis_lists(spec["cross"], f"{path} cross")
        twice = sorted(set(cross) & set(listed))
        if twice:
            raise ConfigError(f"{path}: key(s) {twice} appear in more than one axis")
        cross |= listed
    cross = _axis_lists(cross, str(path)) if cross else {}
    zips = spec.get("zip") or []
    if not isinstance(zips, list):
        raise ConfigError(f"{path}: 'zip' must be a list of groups (mappings of keys to lists)")
    groups = []
    for i, group in enumerate(zips):
        group = _axis_lists(group, f"{path} zip group {i + 1}")
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"{path} zip group {i + 1}: lists must have equal lengths, got {lengths}")
        groups.append(group)
    pin(cross, groups, overrides or [])
    keys = list(cross) + [k for g in groups for k in g]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"{path}: key(s) {repeated} appear in more than one axis")
    if not keys:
        raise ConfigError(f"{path}: no parameters to sweep")

    pipeline = Path(spec.get("pipeline", "dvc.yaml"))
    params = Path(spec.get("params", pipeline.parent / "params.yaml"))
    for label, file in (("pipeline", pipeline), ("params", params)):
        if not (project / file).is_file():
            raise ConfigError(f"{path}: {label} file {file} not found (relative to {project})")
    base = yaml.safe_load((project / params).read_text()) or {}
    points = []
    combos = []
    for combo in expand(cross, groups):
        if combo not in combos:
            combos.append(combo)
    width = max(2, len(str(len(combos) - 1)))
    for i, overrides in enumerate(combos):
        point = Point(f"p{i:0{width}d}", overrides)
        tree = apply_overrides(json.loads(json.dumps(base)), point.assignments())
        validate_params(tree, source=f"{path} point {point.name} ({point.label()})")
        points.append(point)

    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '.', '_' or '-' "
                          "(it names git refs of the experiments)")
    digest = hashlib.sha256(json.dumps(
        [str(pipeline), str(params), [p.overrides for p in points]], sort_keys=True,
        default=str).encode()).hexdigest()[:8]
    return Grid(name=name, sweep_id=f"{name}-{digest}", source=path, pipeline=pipeline,
                params=params, jobs=_positive(spec.get("jobs", 1), "jobs", path, 1),
                retries=_positive(spec.get("retries", 0), "retries", path, 0),
                axes={"cross": cross, "zip": groups}, points=points)
