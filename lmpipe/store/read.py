"""Reading run folders for the store: discovery with file signatures, and parsing their JSON and
JSONL logs into table rows (lmpipe/store/index.py writes them into DuckDB).

Discovery only stats files, so an unchanged tree costs one scandir per directory; a run is parsed
only when the store asks for it (new or changed). Every reader is tolerant: an unreadable JSON
file is an empty object, an unparseable JSONL line is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmpipe.core.jsonl import read_jsonl
from lmpipe.core.run_folder import (
    ENV_FILE,
    EVALS_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    RUN_FILES,
    SUMMARY_FILE,
)
from lmpipe.store.probes import read_linear_probes, read_probes

log = logging.getLogger(__name__)

# summary.json keys that become `runs` columns; every other key goes to `summaries`.
SUMMARY_FIXED = {"stage", "name", "status", "started_at", "ended_at", "wall_time_s", "peak_rss_mb"}
ENV_COLUMNS = ("git_commit", "git_dirty", "host", "device", "lmpipe_version", "torch",
               "transformers")
# The files a run is read from: their (name, size, mtime) make its signature.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number(x: Any) -> float | None:
    if not _is_number(x):
        return None
    try:
        return float(x)
    except OverflowError:  # an int beyond float range
        return math.copysign(math.inf, x)


def _integer(x: Any) -> int | None:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return x if type(x) is int and INT64_MIN <= x <= INT64_MAX else None


def _clean(s: str) -> str:
    """`s` as DuckDB can store it: JSON may smuggle lone surrogates in ("\\ud800"), UTF-8 cannot."""
    return s if s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


def _text(x: Any) -> str | None:
    return None if x is None else _clean(str(x))


def _json_text(value: Any) -> str:
    """json.dumps(value, sort_keys=True, default=str), with fast paths for the usual scalars
    (a run has a few hundred params; json.dumps per leaf dominated indexing)."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(_clean(value))
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is float:
        if math.isfinite(value):
            return float.__repr__(value)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, sort_keys=True, default=str)


def _timestamp(value: Any) -> datetime | None:
    """An ISO string as a naive UTC datetime (naive inputs are taken as UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
        return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts
    except (ValueError, OverflowError):  # not ISO, or a year-1 date pushed out of range by its zone
        return None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} if the file is missing or not a JSON object."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        log.warning("ignoring unreadable %s", path)
        return {}
    return obj if isinstance(obj, dict) else {}


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of a nested dict; lists and empty dicts are leaves."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{path}.")
        else:
            yield path, value


def _env_value(env: dict[str, Any], column: str) -> Any:
    value = env.get(column)
    if column == "git_dirty":
        return value if isinstance(value, bool) else None
    return _text(value)


# --- discovery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFolder:
    """A run folder found under the root, and what it would be read from."""

    run_id: str
    path: Path
    point_file: Path | None
    signature: str


@dataclass
class RunTree:
    runs: list[RunFolder] = field(default_factory=list)
    sweep_files: list[Path] = field(default_factory=list)


def _stat_sig(name: str, st: os.stat_result) -> str:
    # the inode too: runlog rewrites JSON files by rename, so a same-size rewrite within one
    # mtime tick still shows
    return f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def walk(runs_root: Path) -> RunTree:
    """Run folders (with their signatures) and sweep.json files under `runs_root`: stat only,
    nothing is read, so an unchanged tree costs one scandir per directory."""
    tree = RunTree()
    seen_links: set[str] = set()
    run_ids: set[str] = set()
    point_sigs: dict[Path, str] = {}

    def visit(folder: Path, rel: str, point_file: Path | None) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable or vanished meanwhile: nothing to index there
            return
        files: dict[str, os.DirEntry] = {}
        dirs: list[os.DirEntry] = []
        for entry in entries:
            try:
                if entry.is_dir():
                    if not entry.name.startswith("."):
                        dirs.append(entry)
                elif entry.is_file():
                    files[entry.name] = entry
            except OSError:
                continue
        if rel and (SUMMARY_FILE in files or PARAMS_FILE in files):
            try:
                parts = [_stat_sig(n, files[n].stat()) for n in RUN_FILES if n in files]
            except OSError:
                return
            if point_file is not None:
                parts.append(point_sigs[point_file])
            parts.append(str(folder.resolve()))  # a moved root re-reads (runs.path changes)
            run_id = _clean(rel)  # a folder name that is not UTF-8 would stop DuckDB
            if run_id in run_ids:
                log.warning("ignoring run folder %s: its id %r is taken", folder, run_id)
                return
            run_ids.add(run_id)
            tree.runs.append(RunFolder(run_id, folder, point_file, "|".join(parts)))
            return
        if "sweep.json" in files:
            tree.sweep_files.append(folder / "sweep.json")
        if rel and "point.json" in files:
            try:
                point_sigs[folder / "point.json"] = _stat_sig("point.json", files["point.json"].stat())
                point_file = folder / "point.json"
            except OSError:
                pass
        for entry in sorted(dirs, key=lambda e: e.name):
            if entry.is_symlink():  # follow links, but never around a cycle
                target = os.path.realpath(entry.path)
                if target in seen_links:
                    continue
                seen_links.add(target)
            visit(Path(entry.path), f"{rel}/{entry.name}" if rel else entry.name, point_file)

    if runs_root.is_dir():
        visit(runs_root, "", None)
    tree.runs.sort(key=lambda r: r.run_id)
    return tree


def discover_runs(runs_root: Path) -> list[Path]:
    """Run folders under `runs_root` (recursively, see the module docstring), sorted by run id."""
    return [r.path for r in walk(Path(runs_root)).runs]


# --- reading ----------------------------------------------------------------------------------

class Rows:
    """Rows read from changed runs, per table; metrics kept columnar (they are most of the data)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple]] = {t: [] for t in ("runs", "params", "evals", "summaries",
                                                               "probes", "linear_probes")}
        self.metric_runs: list[str] = []
        self.metric_run_rows: list[int] = []
        self.metric_line_steps: list[int] = []
        self.metric_line_rows: list[int] = []
        self.metric_names: list[str] = []
        self.metric_values: list[Any] = []

    def metrics_frame(self) -> pd.DataFrame:
        run_codes = np.repeat(np.arange(len(self.metric_runs)), self.metric_run_rows)
        names = pd.Categorical(self.metric_names)
        if not all(c.isascii() for c in names.categories):  # rare: clean each, then recode
            names = pd.Categorical([_clean(n) for n in self.metric_names])
        try:
            values = np.array(self.metric_values, dtype=np.float64)
        except OverflowError:  # an integer beyond float range somewhere
            values = np.array([_number(v) for v in self.metric_values], dtype=np.float64)
        return pd.DataFrame({
            "run_id": pd.Categorical.from_codes(run_codes, categories=self.metric_runs),
            "step": np.repeat(np.array(self.metric_line_steps, dtype=np.int64), self.metric_line_rows),
            "name": names,
            "value": values,
        })


def _read_metrics(path: Path, rows: Rows) -> int:
    """Append the numeric fields of `path`'s records to `rows`; return the skipped line count.

    The hot loop of indexing (a million values for a thousand runs): bound methods and type
    checks only, one step and one row count per line rather than per value."""
    records, skipped = read_jsonl(path)
    names_append, values_append = rows.metric_names.append, rows.metric_values.append
    steps_append, counts_append = rows.metric_line_steps.append, rows.metric_line_rows.append
    values = rows.metric_values
    first = len(values)
    for record in records:
        step = record.get("step")
        if type(step) is not int or not INT64_MIN <= step <= INT64_MAX:
            step = _integer(step)  # 3.0 counts as step 3; a bool, string or 3.5 does not
            if step is None:
                skipped += 1
                continue
        before = len(values)
        for name, value in record.items():
            kind = type(value)
            if (kind is float or kind is int) and name != "step":
                names_append(name)
                values_append(value)
        steps_append(step)
        counts_append(len(values) - before)
    rows.metric_run_rows.append(len(values) - first)
    return skipped


def _read_evals(path: Path, run_id: str, out: list[tuple]) -> int:
    """Append `path`'s eval records to `out`; return the skipped line count."""
    records, skipped = read_jsonl(path)
    for r in records:
        if not (isinstance(r.get("model"), str)
                and isinstance(r.get("metric"), str) and _is_number(r.get("value"))):
            skipped += 1
            continue
        out.append((run_id, _clean(r["model"]), _clean(r["metric"]), _text(r.get("split")),
                    _text(r.get("attribute")), _number(r["value"]), _integer(r.get("n")),
                    _integer(r.get("step")), _integer(r.get("turn"))))
    return skipped


def read_run(run: RunFolder, rows: Rows, points: dict[Path, dict[str, Any]]) -> None:
    folder, run_id = run.path, run.run_id
    summary = _read_json(folder / SUMMARY_FILE)
    env = _read_json(folder / ENV_FILE)
    sweep = point = group = seed = None
    if run.point_file is not None:
        if run.point_file not in points:
            points[run.point_file] = _read_json(run.point_file)
        info = points[run.point_file]
        # point.json names its sweep and point; the folder names stand in for a damaged file
        point = _text(info.get("point")) or run.point_file.parent.name
        sweep = _text(info.get("sweep")) or run.point_file.parent.parent.name
        # replicates of a seeds axis share a group; without one a point is its own group
        group = _text(info.get("group")) or point
        seed = _integer(info.get("seed"))

    params = rows.tables["params"]
    for key, value in flatten(_read_json(folder / PARAMS_FILE)):
        params.append((run_id, _clean(key), _json_text(value), _number(value)))
    for key, value in summary.items():
        if key not in SUMMARY_FIXED:
            rows.tables["summaries"].append((run_id, _clean(key), _json_text(value), _number(value)))

    rows.metric_runs.append(run_id)
    skipped = _read_metrics(folder / METRICS_FILE, rows)
    skipped += _read_evals(folder / EVALS_FILE, run_id, rows.tables["evals"])
    skipped += read_probes(folder, run_id, rows.tables["probes"])
    skipped += read_linear_probes(folder, run_id, rows.tables["linear_probes"])

    rows.tables["runs"].append((
        run_id, _text(summary.get("stage")), _text(summary.get("name")), sweep, point, group, seed,
        _text(summary.get("status")) or "incomplete",
        _timestamp(summary.get("started_at") or env.get("started_at")),
        _timestamp(summary.get("ended_at") or env.get("ended_at")),
        _number(summary.get("wall_time_s")), _number(summary.get("peak_rss_mb")),
        *(_env_value(env, col) for col in ENV_COLUMNS),
        _clean(str(folder.resolve())), skipped,
    ))


def sweep_rows(sweep_files: list[Path]) -> list[tuple]:
    """The `sweep_points` rows of every sweep.json; a point's group params are its params without
    the sweep's seed keys (`axes.seed_keys`, lmpipe/sweep/grid.py)."""
    rows = []
    for path in sorted(sweep_files):
        sweep = _read_json(path)
        sweep_id = _text(sweep.get("sweep")) or path.parent.name
        axes = sweep.get("axes")
        seed_keys = axes.get("seed_keys") if isinstance(axes, dict) else None
        seed_keys = set(seed_keys) if isinstance(seed_keys, list) else set()
        order = _axis_order(axes)
        points = sweep.get("points")
        for p in points if isinstance(points, list) else []:
            if not isinstance(p, dict):
                continue
            params = p.get("params")
            group_params = ({k: v for k, v in params.items() if k not in seed_keys}
                            if isinstance(params, dict) else params)
            point = _text(p.get("point"))
            rows.append((sweep_id, point, _text(p.get("status")), _text(p.get("exp")),
                         _integer(p.get("attempts")), _number(p.get("wall_time_s")),
                         _text(p.get("error")),
                         None if params is None else _json_text(params),
                         _text(p.get("group")) or point, _integer(p.get("seed")),
                         None if group_params is None else _json_text(group_params), order))
    return sorted(rows, key=row_key)


def _axis_order(axes: Any) -> str | None:
    """The grid's keys in its file's order, crossed ones then zipped ones, as a JSON list."""
    if not isinstance(axes, dict):
        return None
    cross = axes.get("cross") if isinstance(axes.get("cross"), dict) else {}
    zipped = [g for g in axes.get("zip") or [] if isinstance(g, dict)] \
        if isinstance(axes.get("zip"), list) else []
    keys = [*cross, *(key for group in zipped for key in group)]
    return json.dumps([str(k) for k in keys]) if keys else None


def row_key(row: tuple) -> tuple[str, ...]:
    """A total order on rows holding None (sorting tuples with None raises)."""
    return tuple("" if v is None else str(v) for v in row)
