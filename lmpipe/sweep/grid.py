"""Sweep grids: the points a `grid.yaml` describes, every one checked before anything runs.

A grid names parameter values to cross and groups of values that move together:

    name: in-tool-learning                          # the sweep's name (default: the file's stem)
    pipeline: recipes/in-tool-learning/dvc.yaml     # default: dvc.yaml
    params: recipes/in-tool-learning/params.yaml    # default: params.yaml beside the pipeline
    jobs: 2                                         # points run at once (default 1)
    retries: 1                                      # extra attempts for a failed point (default 0)
    first_alone: true                               # the first point alone, then `jobs` at a time
    cross:                                          # every combination of these lists ...
      teacher.model.d_model: [32, 48]
      world.people: [25, 100, 400]
    zip:                                            # ... times each group, whose lists are read
      - world.tool_dialogs: [true, false]           # in lockstep (the i-th values together)
        world.qa_dialogs: [false, true]

Dotted keys at the top level are crossed too, so `key: [a, b]` alone is a grid. The points are the
product of the crossed axes and the zipped groups, in file order (the last axis varies fastest),
named p00, p01, ... `first_alone` is for grids whose points share their upstream stages (a
teacher and its cache): the first point computes them alone and the others restore them from DVC's
run cache, where `jobs` points started together would each compute them. The sweep id is the name plus a hash of the pipeline, the params file and the
points, so rerunning the same grid reuses its id (and its folder under runs/sweeps/).

Seeds: repeating every point to measure its spread.

    seeds: 3                    # or a list: seeds: [0, 1, 2]; every point runs once per seed
    seed_keys: [teacher.train.seed, eval.seed]   # optional: which keys take the seed

With `seeds`, every combination of the axes becomes a *group* of replicates that differ only in
their seed: group p03 runs as points p03s0, p03s1, p03s2, each with the seed written into every
seed key. By default the seed keys are the pipeline's training and evaluation seeds, every
`<section>.train.seed` of its params file plus `eval.seed` (in the default experiment: teacher,
student, distill and quantize training, and the sample of people eval asks): the question is how
much a result depends on the model's initialization, batch order and eval sample, so the data
stays fixed (`world.seed` and `tokenize.seed` do not vary; list them in `seed_keys` to vary the
data too). A seed key may not also be an axis. The points run seed by seed (every group with the
first seed, then with the second ...), so an interrupted sweep covers the whole grid once before
it repeats it. Each point's record (sweep.json, point.json) carries its `group` and `seed`, and the
store aggregates the replicates of a group as mean, min, max and n (lmpipe/store/spread.py, and
every report). A grid of seeds alone (`seeds: 3` and no axis) repeats the pipeline as it is; the
override `seeds=1` runs one replicate of each group (a quick trial of a long sweep). Without
`seeds`, each point is its own group and has no seed.
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

from lmpipe.core.section import ConfigError
from lmpipe.params.config import apply_overrides, validate_params

OPTIONS = {"name", "pipeline", "params", "jobs", "retries", "first_alone", "cross", "zip", "seeds",
           "seed_keys"}
# the default seed keys: every training section's seed and the eval sample's (see the docstring)
TRAIN_SEED = re.compile(r"(?:.+\.)?train\.seed")
EVAL_SEED = "eval.seed"


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
    """One combination: its name and the dotted-key overrides that make it; with a seeds axis,
    also its group (the replicates that differ only in `seed`) and its seed."""

    name: str
    overrides: dict[str, Any]
    group: str | None = None
    seed: int | None = None

    @property
    def group_id(self) -> str:
        """The replicate group: the point itself when the grid has no seeds."""
        return self.group or self.name

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
    seeds: tuple[int, ...] = ()
    seed_keys: tuple[str, ...] = ()
    first_alone: bool = False


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
    crossed key takes that value in every point; a zipped key that lists the value keeps only
    its group's rows with it (`optimizer=sgd` of a zip of optimizers and their own rates runs
    SGD's rates), and takes it in every row if it lists no such value; any other key becomes
    a constant."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        value = yaml.safe_load(raw)
        group = next((g for g in groups if key in g), None)
        if group is None:
            cross[key] = [value]
        elif value in group[key]:
            rows = [i for i, v in enumerate(group[key]) if v == value]
            for name in group:
                group[name] = [group[name][i] for i in rows]
        else:
            group[key] = [value] * len(group[key])


def parse_seeds(value: Any, where: str) -> list[int]:
    """`seeds: N` (seeds 0..N-1) or `seeds: [s, ...]` (distinct integers) as a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{where}: 'seeds' must be at least 1, got {value}")
        return list(range(value))
    if (isinstance(value, list) and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: 'seeds' lists a seed twice: {value}")
        return list(value)
    raise ConfigError(f"{where}: 'seeds' must be a count (seeds: 3) or a list of distinct "
                      f"integers (seeds: [0, 1, 2]), got {value!r}")


def default_seed_keys(base: dict[str, Any]) -> list[str]:
    """The params file's training seeds (`<section>.train.seed`) and `eval.seed`, in file order."""
    keys = []

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{dotted}.")
            elif TRAIN_SEED.fullmatch(dotted) or dotted == EVAL_SEED:
                keys.append(dotted)

    walk(base, "")
    return keys


def _seed_keys(value: Any, base: dict[str, Any], where: str) -> list[str]:
    if value is None:
        keys = default_seed_keys(base)
        if not keys:
            raise ConfigError(f"{where}: 'seeds' needs seed keys, and the params file has no "
                              "<section>.train.seed or eval.seed; list them in 'seed_keys'")
        return keys
    keys = value if isinstance(value, list) else [value]
    if not keys or not all(isinstance(k, str) and "." in k for k in keys):
        raise ConfigError(f"{where}: 'seed_keys' must be a list of dotted parameter keys "
                          f"(e.g. [teacher.train.seed, eval.seed]), got {value!r}")
    return list(dict.fromkeys(keys))


def load_grid(path: str | Path, project: str | Path = ".",
              overrides: list[str] | None = None) -> Grid:
    """Read, expand and check a grid: every point must be a valid params file for its pipeline.
    `overrides` (`key=value`) pin keys to one value; points that become equal run once;
    `seeds=N` (or `seeds=[...]`) replaces the grid's seeds.

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
    overrides = list(overrides or [])
    seeds_spec = spec.get("seeds")
    for item in [o for o in overrides if "=" in o and o.split("=", 1)[0].strip() == "seeds"]:
        overrides.remove(item)  # a pin of the seeds axis itself, not of a parameter
        seeds_spec = yaml.safe_load(item.split("=", 1)[1])
    seeds = parse_seeds(seeds_spec, str(path)) if seeds_spec is not None else []
    if "seed_keys" in spec and not seeds:
        raise ConfigError(f"{path}: 'seed_keys' without 'seeds'")
    pin(cross, groups, overrides)
    keys = list(cross) + [k for g in groups for k in g]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"{path}: key(s) {repeated} appear in more than one axis")
    if not keys and not seeds:
        raise ConfigError(f"{path}: no parameters to sweep")

    pipeline = Path(spec.get("pipeline", "dvc.yaml"))
    params = Path(spec.get("params", pipeline.parent / "params.yaml"))
    for label, file in (("pipeline", pipeline), ("params", params)):
        if not (project / file).is_file():
            raise ConfigError(f"{path}: {label} file {file} not found (relative to {project})")
    base = yaml.safe_load((project / params).read_text()) or {}
    seed_keys = _seed_keys(spec.get("seed_keys"), base, str(path)) if seeds else []
    crossed = sorted(set(seed_keys) & set(keys))
    if crossed:
        raise ConfigError(f"{path}: seed key(s) {crossed} are also an axis; the seeds axis sets "
                          "them (drop them from the axes, or from seed_keys)")
    points = []
    combos = []
    for combo in expand(cross, groups) if keys else [{}]:
        if combo not in combos:
            combos.append(combo)
    width = max(2, len(str(len(combos) - 1)))
    names = [f"p{i:0{width}d}" for i in range(len(combos))]
    if seeds:
        # seed by seed: every group once before any is repeated
        todo = [Point(f"{name}s{seed}", {**combo, **dict.fromkeys(seed_keys, seed)}, name, seed)
                for seed in seeds for name, combo in zip(names, combos)]
    else:
        todo = [Point(name, combo) for name, combo in zip(names, combos)]
    for point in todo:
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
    first_alone = spec.get("first_alone", False)
    if not isinstance(first_alone, bool):
        raise ConfigError(f"{path}: first_alone: {first_alone!r}; expected true or false")
    axes: dict[str, Any] = {"cross": cross, "zip": groups}
    if seeds:
        axes |= {"seeds": seeds, "seed_keys": seed_keys}
    return Grid(name=name, sweep_id=f"{name}-{digest}", source=path, pipeline=pipeline,
                params=params, jobs=_positive(spec.get("jobs", 1), "jobs", path, 1),
                retries=_positive(spec.get("retries", 0), "retries", path, 0),
                axes=axes, points=points, seeds=tuple(seeds), seed_keys=tuple(seed_keys),
                first_alone=first_alone)
