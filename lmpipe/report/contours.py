"""Contour lines of a measured value over a log-spaced lattice, for the scaling page.

Sweep points sit on a lattice of (parameters, facts). `lattice` averages the measurements that
fall on each lattice node (NaN where a node was not measured; when one axis takes too many
distinct values they are first grouped into log-spaced bins), `lattice_range` gives the lowest and
highest of them (the spread of a node's replicates, when a sweep repeats points over seeds),
`cells` gives each node a rectangle
reaching half way to its neighbours in log space (the heatmap), and `contour_lines` traces
iso-lines at the given levels with contourpy on (log10 x, log10 y), linear between nodes, so a line
passes between two neighbouring nodes where the interpolated value crosses the level; no line is
drawn where nodes are missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from contourpy import LineType, contour_generator

LEVELS = (0.25, 0.5, 0.75, 0.9)
MAX_NODES = 16   # per axis: more distinct values than this are grouped into log-spaced bins


def _nodes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lattice coordinates (log10) of an axis and each value's node index."""
    logs = np.log10(values)
    distinct = np.unique(logs)
    if len(distinct) <= MAX_NODES:
        return distinct, np.searchsorted(distinct, logs)
    edges = np.linspace(distinct[0], distinct[-1], MAX_NODES + 1)
    which = np.clip(np.searchsorted(edges, logs, side="right") - 1, 0, MAX_NODES - 1)
    used = np.unique(which)
    centers = np.array([logs[which == i].mean() for i in used])
    return centers, np.searchsorted(used, which)


def _placed(x: np.ndarray, y: np.ndarray, z: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log10 x nodes, log10 y nodes, each kept z, its x node, its y node)."""
    x, y, z = (np.asarray(a, dtype=float) for a in (x, y, z))
    keep = np.isfinite(z) & (x > 0) & (y > 0)
    x, y, z = x[keep], y[keep], z[keep]
    if not len(z):
        return np.array([]), np.array([]), z, np.array([], int), np.array([], int)
    lx, ix = _nodes(x)
    ly, iy = _nodes(y)
    return lx, ly, z, ix, iy


def lattice(x: np.ndarray, y: np.ndarray, z: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log10 x nodes, log10 y nodes, mean z per node [y, x] with NaN gaps, count per node).

    x and y must be positive; points with a non-finite z are ignored.
    """
    lx, ly, z, ix, iy = _placed(x, y, z)
    if not len(z):
        return np.array([]), np.array([]), np.empty((0, 0)), np.empty((0, 0))
    total = np.zeros((len(ly), len(lx)))
    count = np.zeros((len(ly), len(lx)))
    np.add.at(total, (iy, ix), z)
    np.add.at(count, (iy, ix), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return lx, ly, mean, count


def lattice_range(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest z per node [y, x] of `lattice(x, y, z)`'s nodes (NaN gaps)."""
    lx, ly, z, ix, iy = _placed(x, y, z)
    low = np.full((len(ly), len(lx)), np.inf)
    high = np.full((len(ly), len(lx)), -np.inf)
    np.minimum.at(low, (iy, ix), z)
    np.maximum.at(high, (iy, ix), z)
    return np.where(np.isfinite(low), low, np.nan), np.where(np.isfinite(high), high, np.nan)


def _edges(nodes: np.ndarray) -> np.ndarray:
    """Cell boundaries half way between neighbouring nodes (log10); a lone node gets ±0.15."""
    if len(nodes) == 1:
        return np.array([nodes[0] - 0.15, nodes[0] + 0.15])
    mid = (nodes[1:] + nodes[:-1]) / 2
    return np.concatenate([[nodes[0] - (mid[0] - nodes[0])], mid,
                           [nodes[-1] + (nodes[-1] - mid[-1])]])


def cells(lx: np.ndarray, ly: np.ndarray, mean: np.ndarray, count: np.ndarray,
          low: np.ndarray | None = None, high: np.ndarray | None = None) -> pd.DataFrame:
    """One rectangle per measured node: x, x2, y, y2 (linear units), value, n; and lo, hi (the
    lowest and highest measurement) when `low` and `high` are given."""
    ex, ey = _edges(lx), _edges(ly)
    spread = low is not None and high is not None
    rows = [{"x": 10 ** ex[i], "x2": 10 ** ex[i + 1], "y": 10 ** ey[j], "y2": 10 ** ey[j + 1],
             "xc": 10 ** lx[i], "yc": 10 ** ly[j], "value": mean[j, i], "n": int(count[j, i]),
             **({"lo": low[j, i], "hi": high[j, i]} if spread else {})}
            for j in range(len(ly)) for i in range(len(lx)) if count[j, i] > 0]
    columns = ["x", "x2", "y", "y2", "xc", "yc", "value", "n"] + (["lo", "hi"] if spread else [])
    return pd.DataFrame(rows, columns=columns)


def contour_lines(lx: np.ndarray, ly: np.ndarray, mean: np.ndarray,
                  levels: tuple[float, ...] = LEVELS) -> pd.DataFrame:
    """Vertices of the iso-lines: level, line (an id), order, x, y (linear units).

    Empty when the lattice is smaller than 2 × 2. Missing nodes (NaN) are masked: a lattice quad
    with one missing corner is contoured on the triangle of its three measured corners only
    (contourpy's corner masking), one with more missing corners not at all.
    """
    columns = ["level", "line", "order", "x", "y"]
    if len(lx) < 2 or len(ly) < 2 or np.isnan(mean).all():
        return pd.DataFrame(columns=columns)
    z = np.ma.masked_invalid(mean)
    generator = contour_generator(x=lx, y=ly, z=z, line_type=LineType.Separate,
                                   corner_mask=True)
    rows = []
    line = 0
    for level in levels:
        for vertices in generator.lines(level):
            for order, (vx, vy) in enumerate(vertices):
                rows.append((level, line, order, 10 ** vx, 10 ** vy))
            line += 1
    return pd.DataFrame(rows, columns=columns)


def line_labels(lines: pd.DataFrame) -> pd.DataFrame:
    """One label per level: at the middle vertex of that level's longest line."""
    if lines.empty:
        return pd.DataFrame(columns=["level", "x", "y", "text"])
    sizes = lines.groupby(["level", "line"]).size().reset_index(name="size")
    longest = sizes.sort_values("size", ascending=False).drop_duplicates("level")
    rows = []
    for level, line, size in longest.itertuples(index=False):
        vertices = lines[lines["line"] == line].sort_values("order")
        middle = vertices.iloc[size // 2]
        rows.append({"level": level, "x": middle["x"], "y": middle["y"], "text": f"{level:g}"})
    return pd.DataFrame(rows)
